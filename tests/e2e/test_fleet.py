"""Worker heartbeats and `sdqueue models`: the fleet view, and a worker swapping models within its memory budget."""

from __future__ import annotations

import asyncio
import math
import os
import sys

from sdqueue.client import SdqueueClient
from sdqueue.config import to_environment
from sdqueue.contracts import SucceededEvent, WorkerHeartbeat
from sdqueue.worker.generate import ImageGenerator
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, updated

HEARTBEAT_S = 0.5


async def _heartbeat(client: SdqueueClient) -> WorkerHeartbeat:
    fleet = await client.fleet(listen_s=3 * HEARTBEAT_S)
    assert len(fleet) == 1, fleet
    return fleet[0]


async def test_a_worker_over_its_budget_swaps_models_and_says_so(
    isolated: IsolatedStack, isolated_client: SdqueueClient, tiny_generator: ImageGenerator
):
    one_model_mb = math.ceil(1.5 * tiny_generator.memory_bytes / 2**20)
    assert 2 * tiny_generator.memory_bytes > one_model_mb * 2**20, "the budget must not hold two models"
    source = isolated.settings.model_sources()["default"]
    settings = updated(isolated.settings, runtime={"model_memory_mb": one_model_mb}).model_copy(
        update={"model": None, "models": {"left": source, "right": source}, "heartbeat_interval_s": HEARTBEAT_S}
    )
    isolated.start_worker("swapper", settings)
    await isolated_client.wait_for_workers("left", timeout_s=120)

    first = await _heartbeat(isolated_client)
    assert (first.worker, first.state, first.models, first.device) == ("swapper", "ready", ("left", "right"), "cpu")
    assert first.loaded == ("right",), "both were loaded at start; the budget kept the last one"
    assert first.families == {"left": "sd1", "right": "sd1"}, "an unloaded alias keeps its family"

    loaded_after = []
    for alias in ("left", "right", "left"):
        event = await isolated_client.wait((await _submit(isolated_client, alias)), timeout_s=120)
        assert isinstance(event, SucceededEvent), isolated.logs()
        loaded_after.append((await _heartbeat(isolated_client)).loaded)
    assert loaded_after == [("left",), ("right",), ("left",)]


async def _submit(client: SdqueueClient, alias: str) -> str:
    request = txt2img(model=alias)
    await client.submit(request)
    return request.job_id


async def test_sdqueue_models_lists_the_fleet(isolated: IsolatedStack, isolated_client: SdqueueClient):
    source = isolated.settings.model_sources()["default"]
    for name, aliases in (("one", ("alpha",)), ("two", ("alpha", "beta"))):
        settings = isolated.settings.model_copy(
            update={"model": None, "models": dict.fromkeys(aliases, source), "heartbeat_interval_s": HEARTBEAT_S}
        )
        isolated.start_worker(name, settings)
    await isolated_client.wait_for_workers("alpha", minimum=2, timeout_s=120)

    command = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "sdqueue", "models", "--listen", str(3 * HEARTBEAT_S)],
        env={**os.environ, **to_environment(isolated.settings)},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(command.communicate(), timeout=60)
    assert command.returncode == 0
    listed = stdout.decode().splitlines()

    rows = {line.split()[0]: line.split()[1:] for line in listed if line.strip()}
    assert rows["alpha"] == ["sd1", "512x512@7.5", "one,two", "one,two"]
    assert rows["beta"] == ["sd1", "512x512@7.5", "two", "two"]
    assert rows["one"][:2] == ["ready", "cpu"]
    assert rows["two"][-1] == "alpha,beta"
