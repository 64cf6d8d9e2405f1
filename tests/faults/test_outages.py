"""The broker restarts and storage goes away mid-run: no job is lost, duplicated, dead-lettered or truncated."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx

from sdqueue.client import SdqueueClient
from sdqueue.contracts import SucceededEvent
from sdqueue.devstack import start_seaweed
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, free_port, queue_depth, rabbitmqctl, updated
from tests.plugins.stack import BrokerProbe, EventLog

OUTAGE_S = 10.0


async def _readiness(port: int) -> dict[str, bool]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    body: dict[str, bool] = response.json()
    assert (response.status_code == 200) == body["ready"]
    return body


async def _until_ready_is(port: int, *, ready: bool, timeout_s: float = 30.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout_s
    while (state := await _readiness(port))["ready"] != ready:
        assert time.monotonic() < deadline, f"readiness stayed {state}"
        await asyncio.sleep(0.2)
    return state


async def _until_succeeded(logs: dict[str, EventLog], *, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(bool(log.of_type("succeeded")) for log in logs.values()) < count:
        assert time.monotonic() < deadline, "jobs did not start succeeding"
        await asyncio.sleep(0.1)


async def _all_succeed_once(
    client: SdqueueClient, stack: IsolatedStack, logs: dict[str, EventLog], job_ids: list[str]
) -> list[SucceededEvent]:
    events = []
    for job_id in job_ids:
        event = await client.wait(job_id, timeout_s=180)
        assert isinstance(event, SucceededEvent), f"{event}\n{stack.logs()}"
        assert await client.read_record(job_id) == event
        events.append(event)
    for job_id in job_ids:
        # An observer's queue misses what is published while the broker is away, so a job may have no log here.
        assert len(logs.get(job_id, EventLog()).of_type("succeeded")) <= 1, f"{job_id} generated twice"
    return events


async def test_broker_restart_with_jobs_queued_and_in_flight(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    health_port = free_port()
    # One job in hand: with more, a job still generating when the broker redelivers it (after the channel died)
    # is generated a second time; its record keeps one result, but this test counts generations.
    settings = updated(isolated.settings, broker={"prefetch": 1}).model_copy(update={"health_port": health_port})
    worker = isolated.start_worker("steady", settings)
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    jobs = [txt2img(steps=6, seed=i) for i in range(50)]
    for request in jobs:
        await isolated_client.submit(request)
    await _until_succeeded(logs, count=5)

    rabbitmqctl("stop_app")
    try:
        assert (await _until_ready_is(health_port, ready=False))["broker"] is False
        await asyncio.sleep(2)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    await _until_ready_is(health_port, ready=True, timeout_s=60)

    events = await _all_succeed_once(isolated_client, isolated, logs, [r.job_id for r in jobs])
    assert worker.process.poll() is None, "the worker exited during the broker restart"
    assert all(isolated.output_keys(e.job_id) == [i.key for i in e.images] for e in events)
    assert await queue_depth(isolated.settings) == 0
    assert await isolated_probe.dead_letters() == {}


async def test_storage_outage_during_uploads(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe, tmp_path: Path
):
    s3 = isolated.settings.s3.model_copy(update={"bucket": f"outage-{secrets.token_hex(3)}"})
    secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else ""
    data_dir, key_id = tmp_path / "weed", s3.access_key_id or ""
    first = isolated.track(start_seaweed(data_dir, access_key_id=key_id, secret_access_key=secret, bucket=s3.bucket))
    health_port = free_port()
    settings = updated(
        isolated.settings, s3={"endpoint_url": first.endpoint_url, "bucket": s3.bucket, "timeout_s": 2.0}
    )
    isolated.start_worker("patient", settings.model_copy(update={"health_port": health_port}))
    async with SdqueueClient(settings, subject="tester") as client:
        await client.wait_for_workers("default", timeout_s=120)
        logs = await isolated_probe.watch_all()
        jobs = [txt2img(steps=8, seed=i, num_images=2) for i in range(20)]
        for request in jobs:
            await client.submit(request)
        await _until_succeeded(logs, count=3)

        first.stop()
        assert (await _until_ready_is(health_port, ready=False))["storage"] is False
        await asyncio.sleep(OUTAGE_S)
        isolated.track(
            start_seaweed(
                data_dir, s3_port=first.ports["s3"], access_key_id=key_id, secret_access_key=secret, bucket=s3.bucket
            )
        )

        await _until_ready_is(health_port, ready=True)
        events = await _all_succeed_once(client, isolated, logs, [r.job_id for r in jobs])
        for event in events:
            for image in event.images:
                assert len(await client.fetch_image(image)) == image.size  # sha256 checked too

    assert await isolated_probe.dead_letters() == {}
