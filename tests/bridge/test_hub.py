"""The bridge hub's caches, fed directly: previews reach followers whole but are cached under a byte cap, and the
fleet view forgets silent and draining workers. The broker's side (who may send what) is in test_models.py."""

from __future__ import annotations

import asyncio
from typing import Literal

from sdqueue.bridge._fleet import FleetView, list_models
from sdqueue.bridge._hub import PREVIEW_CACHE_BYTES, EventHub
from sdqueue.config import BrokerSettings
from sdqueue.contracts import PreviewImage, ProgressEvent, SucceededEvent, Timings, WorkerHeartbeat

PREVIEW_BYTES = 64 * 1024


def progress(job_id: str, step: int, *, preview: PreviewImage | None = None) -> ProgressEvent:
    return ProgressEvent(job_id=job_id, model="default", worker="w1", attempt=1, step=step, steps=10, preview=preview)


def preview(fill: str = "A") -> PreviewImage:
    return PreviewImage(width=64, height=64, data=fill * PREVIEW_BYTES)


def cached_preview_bytes(hub: EventHub, job_ids: list[str]) -> int:
    total = 0
    for job_id in job_ids:
        event = hub.latest(job_id)
        if isinstance(event, ProgressEvent) and event.preview is not None:
            total += len(event.preview.data)
    return total


async def test_followers_get_each_preview_and_the_cache_keeps_the_latest_one():
    hub = EventHub(cache_size=100, broker=BrokerSettings())
    async with hub.subscribe("job-1") as queue:
        hub.dispatch(progress("job-1", 1, preview=preview("A")))
        hub.dispatch(progress("job-1", 2))
        hub.dispatch(progress("job-1", 3, preview=preview("B")))
        hub.dispatch(progress("job-1", 4))
        received = [queue.get_nowait() for _ in range(4)]

    assert [event.preview is not None for event in received if isinstance(event, ProgressEvent)] == [
        True,
        False,
        True,
        False,
    ]
    latest = hub.latest("job-1")
    assert isinstance(latest, ProgressEvent)
    assert latest.step == 4
    assert latest.preview == preview("B")


async def test_cached_previews_stay_under_the_byte_cap_and_end_with_their_job():
    hub = EventHub(cache_size=10_000, broker=BrokerSettings())
    job_ids = [f"job-{index}" for index in range(2 * PREVIEW_CACHE_BYTES // PREVIEW_BYTES)]
    for job_id in job_ids:
        hub.dispatch(progress(job_id, 1, preview=preview()))
    newest = job_ids[-1]
    hub.dispatch(
        SucceededEvent(job_id=job_ids[-2], model="default", worker="w1", attempt=1, images=[], timings=Timings())
    )

    assert 0 < cached_preview_bytes(hub, job_ids) <= PREVIEW_CACHE_BYTES
    oldest = hub.latest(job_ids[0])
    assert isinstance(oldest, ProgressEvent)
    assert oldest.preview is None  # its progress is still cached, its preview no longer
    ended = hub.latest(job_ids[-2])
    assert isinstance(ended, ProgressEvent)
    assert ended.preview is None
    latest = hub.latest(newest)
    assert isinstance(latest, ProgressEvent)
    assert latest.preview is not None


def beat(worker: str, *, state: Literal["ready", "draining"] = "ready", interval_s: float = 10.0) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker=worker,
        state=state,
        models=("default",),
        loaded=(),
        device="cpu",
        in_flight=0,
        interval_s=interval_s,
    )


async def test_the_fleet_view_forgets_silent_and_draining_workers():
    fleet = FleetView()
    fleet.note(beat("quick", interval_s=0.05))
    fleet.note(beat("steady"))
    fleet.note(beat("leaving"))

    fleet.note(beat("leaving", state="draining"))
    await asyncio.sleep(0.2)

    assert [heartbeat.worker for heartbeat in fleet.workers()] == ["steady"]
    listing = list_models(fleet.workers())
    assert [(model.alias, model.family, model.schedulers, model.workers) for model in listing.models] == [
        ("default", None, None, 1)
    ]
