"""In-memory collaborators of the job path (ports.py), for driving it in unit tests without broker or bucket.

Each behaviour they stand in for is proven on real parts by tests/e2e and tests/faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from sdqueue.contracts import JobEvent, TerminalEvent
from sdqueue.contracts.errors import StorageError
from sdqueue.worker.consume import Delivery
from sdqueue.worker.generate import Family, GeneratedImages, GenerationSpec, StepPreview
from sdqueue.worker.generate.families import SD1
from sdqueue.worker.ports import StoredRecord
from sdqueue.worker.publish import PublishFailed
from sdqueue.worker.verify import Caller


@dataclass
class MemoryRecords:
    """Claims and records in dicts; `outage` makes every call fail as an unreachable bucket does."""

    claims: dict[str, Caller] = field(default_factory=dict)
    records: dict[str, StoredRecord] = field(default_factory=dict)
    outage: bool = False

    async def claim(self, job_id: str, caller: Caller) -> bool:
        self._check()
        return self.claims.setdefault(job_id, caller) is caller

    async def claimant(self, job_id: str) -> Caller | None:
        self._check()
        return self.claims.get(job_id)

    async def read(self, job_id: str) -> StoredRecord | None:
        self._check()
        return self.records.get(job_id)

    async def write_once(self, job_id: str, event: TerminalEvent, *, owner: Caller) -> bool:
        self._check()
        if job_id in self.records:
            return False
        self.records[job_id] = StoredRecord(event=event, owner=owner)
        return True

    def _check(self) -> None:
        if self.outage:
            raise StorageError("storage unavailable during read")


@dataclass
class MemoryObjects:
    """Objects in a dict; URLs are `memory://<key>`."""

    objects: dict[str, bytes] = field(default_factory=dict)

    async def read(self, key: str, *, max_bytes: int) -> bytes | None:
        data = self.objects.get(key)
        return None if data is None else data[: max_bytes + 1]

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        self.objects[key] = data

    def url(self, key: str) -> str:
        return f"memory://{key}"


@dataclass
class RecordingEvents:
    """Keeps every published event; `fail_on` names event types whose publish is not confirmed."""

    published: list[JobEvent] = field(default_factory=list)
    fail_on: frozenset[str] = frozenset()

    async def publish(self, event: JobEvent, *, reply_to: str | None, correlation_id: str | None) -> None:
        if event.type in self.fail_on:
            raise PublishFailed(f"event {event.type} was not confirmed")
        self.published.append(event)

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.published]


@dataclass
class RecordingRequeue:
    """Keeps the backoffs of retries and the jobs moved to the overflow lane; `confirm` says whether copies land."""

    retries: list[float] = field(default_factory=list)
    overflowed: list[str | None] = field(default_factory=list)
    confirm: bool = True

    async def retry_later(self, delivery: Delivery, *, backoff_s: float) -> bool:
        self.retries.append(backoff_s)
        return self.confirm

    async def to_overflow(self, delivery: Delivery) -> bool:
        self.overflowed.append(delivery.job_id)
        return self.confirm


@dataclass
class RecordingWebhooks:
    """Keeps every queued webhook as (job id, url, issuer)."""

    queued: list[tuple[str, str, str]] = field(default_factory=list)

    async def enqueue(self, event: TerminalEvent, *, url: str, issuer: str) -> None:
        self.queued.append((event.job_id, url, issuer))


@dataclass
class SolidGenerator:
    """Paints one solid image per seed (the seed picks the colour) at the final size, reporting every step, and a grey
    8x8 preview at each step when the spec asks for previews; `error` is raised instead."""

    scheduler_names: tuple[str, ...] = ("ddim",)
    family: Family = SD1
    calls: list[GenerationSpec] = field(default_factory=list)
    error: Exception | None = None

    async def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: Callable[[StepPreview], None] | None = None,
        rank: int = 0,
    ) -> GeneratedImages:
        self.calls.append(spec)
        if self.error is not None:
            raise self.error
        for step in range(1, spec.steps + 1):
            on_step(step, spec.steps)
            if on_preview is not None and spec.preview_interval_s is not None:
                on_preview(StepPreview(step=step, steps=spec.steps, image=Image.new("RGB", (8, 8), (128, 128, 128))))
            await asyncio.sleep(0)
        size = (spec.width, spec.height) if spec.hires is None else (spec.hires.width, spec.hires.height)
        images = [Image.new("RGB", size, (seed % 256, 0, 0)) for seed in spec.seeds]
        return GeneratedImages(images=images, warnings=[])


@dataclass
class SettledMessage:
    """Stands in for an incoming message where intake settles it (the overflow move acks it)."""

    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")
