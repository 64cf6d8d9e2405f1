"""Cancel over sdqueue.control: a running job stops at its next step, a queued one never starts."""

from __future__ import annotations

import asyncio

from sdqueue.client import SdqueueClient
from sdqueue.contracts import CancelledEvent, ErrorCode, ProgressEvent, SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.stack import BrokerProbe

SLOW = {"width": 256, "height": 256, "steps": 60}


async def test_cancel_stops_a_running_job(client: SdqueueClient, probe: BrokerProbe):
    request = txt2img(**SLOW)
    log = await probe.watch(request.job_id)
    await client.submit(request)
    await log.wait_for("progress", timeout_s=60)

    assert await client.cancel(request.job_id, reason="changed my mind")

    event = await client.wait(request.job_id, timeout_s=60)
    assert isinstance(event, CancelledEvent)
    assert event.error.code is ErrorCode.CANCELLED
    assert await client.read_record(request.job_id) == event
    last_progress = log.of_type("progress")[-1]
    assert isinstance(last_progress, ProgressEvent)
    assert last_progress.step < SLOW["steps"]
    assert await probe.dead_letter(request.job_id, timeout_s=1) is None


async def test_cancel_skips_a_queued_job(client: SdqueueClient, probe: BrokerProbe):
    running, queued = txt2img(**SLOW), txt2img()
    queued_log = await probe.watch(queued.job_id)
    await client.submit(running)
    await client.submit(queued)

    assert await client.cancel(queued.job_id)

    event = await client.wait(queued.job_id, timeout_s=120)
    assert isinstance(event, CancelledEvent)
    assert not queued_log.of_type("started")
    assert isinstance(await client.wait(running.job_id, timeout_s=120), SucceededEvent)


async def test_only_the_owner_can_cancel(client: SdqueueClient, probe: BrokerProbe):
    request = txt2img(**SLOW)
    log = await probe.watch(request.job_id)
    await client.submit(request)
    await log.wait_for("started", timeout_s=60)

    await client.cancel(request.job_id, subject="mallory")
    await asyncio.sleep(0.2)

    assert isinstance(await client.wait(request.job_id, timeout_s=120), SucceededEvent)
