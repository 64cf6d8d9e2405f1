"""Generation runs off the event loop: heartbeats keep flowing through a job much longer than the heartbeat."""

from __future__ import annotations

from sdqueue.client import SdqueueClient
from sdqueue.contracts import SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, updated

HEARTBEAT_S = 1


async def test_heartbeats_flow_during_a_long_generation(isolated: IsolatedStack, isolated_client: SdqueueClient):
    worker = isolated.start_worker("beating", updated(isolated.settings, broker={"heartbeat_s": HEARTBEAT_S}))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    request = txt2img(width=384, height=384, steps=60)  # about 3 s on 2 quiet cores: several heartbeats

    event = await isolated_client.generate(request, timeout_s=120)

    assert isinstance(event, SucceededEvent)
    assert event.timings.generate is not None
    assert event.timings.generate > 2 * HEARTBEAT_S
    assert event.attempt == 1, "the job was redelivered: the worker's connection dropped"
    log = worker.log_path.read_text()
    assert "Reconnecting" not in log
    assert "missed heartbeats" not in log.lower()
    assert worker.process.poll() is None
