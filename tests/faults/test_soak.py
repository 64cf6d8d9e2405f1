"""Soak: 1000 small jobs through two worker processes; nothing lost, nothing duplicated, memory flat."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sdqueue.client import SdqueueClient
from sdqueue.contracts import SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, queue_depth, rss_kib, updated
from tests.plugins.stack import BrokerProbe, EventLog

JOBS = 1000
WARM_UP_JOBS = 100
MAX_RSS_GROWTH = 1.10


def _succeeded(logs: dict[str, EventLog]) -> int:
    return sum(bool(log.of_type("succeeded")) for log in logs.values())


async def _until(condition: object, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "soak stalled"
        await asyncio.sleep(0.2)


async def test_soak_1000_jobs_two_workers(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    # One torch thread each: two workers on two cores, without OpenMP threads fighting over them.
    settings = updated(isolated.settings, runtime={"threads": 1})
    workers = [isolated.start_worker("soak-a", settings), isolated.start_worker("soak-b", settings)]
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    jobs = [txt2img(seed=i) for i in range(JOBS)]
    started = time.monotonic()
    await asyncio.gather(*(isolated_client.submit(request) for request in jobs))

    await _until(lambda: _succeeded(logs) >= WARM_UP_JOBS, timeout_s=300)
    rss_warm = [rss_kib(w.process.pid) for w in workers]
    events = [await isolated_client.wait(request.job_id, timeout_s=600) for request in jobs]
    assert all(isinstance(event, SucceededEvent) for event in events)
    elapsed_s = time.monotonic() - started
    await _until(lambda: _succeeded(logs) >= JOBS, timeout_s=30)
    rss_end = [rss_kib(w.process.pid) for w in workers]

    print(f"\nsoak: {JOBS} jobs in {elapsed_s:.1f}s ({JOBS / elapsed_s:.1f} jobs/s) on 2 workers")
    for name, warm, end in zip(("soak-a", "soak-b"), rss_warm, rss_end, strict=True):
        print(
            f"soak: {name} RSS after {WARM_UP_JOBS} jobs {warm / 1024:.0f} MiB, after {JOBS} {end / 1024:.0f} MiB "
            f"({end / warm:.3f}x)"
        )
    assert Counter(len(log.of_type("succeeded")) for log in logs.values()) == Counter({1: JOBS})
    listing = isolated.s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=isolated.settings.s3.bucket, Prefix="outputs/"
    )
    keys = [item["Key"] for page in listing for item in page.get("Contents", [])]
    assert sorted(keys) == sorted(
        image.key for event in events if isinstance(event, SucceededEvent) for image in event.images
    )
    assert await queue_depth(isolated.settings) == 0
    assert await isolated_probe.dead_letters(settle_s=0) == {}
    for warm, end in zip(rss_warm, rss_end, strict=True):
        assert end <= warm * MAX_RSS_GROWTH
