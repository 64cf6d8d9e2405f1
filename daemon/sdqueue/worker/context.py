"""What the worker knows about one job while it runs: the fields every event carries, and its timings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sdqueue.contracts import CancelledEvent, ErrorInfo, FailedEvent, StartedEvent, Timings, utc_now
from sdqueue.worker.verify import Caller


@dataclass(kw_only=True)
class JobContext:
    """Mutable per-job state; filled in as stages succeed (caller once the signature verified, owner once the claims
    held too, metadata and callback after validate)."""

    job_id: str
    model: str
    worker: str
    attempt: int
    published_at: datetime | None
    caller: Caller | None = None
    owner: Caller | None = None
    rank: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None  # set only once the allow-list accepted it
    phase_s: dict[str, float] = field(default_factory=dict)
    started_monotonic: float = field(default_factory=time.monotonic)

    def event_fields(self) -> dict[str, object]:
        """The fields shared by every event of this job."""
        return {
            "job_id": self.job_id,
            "model": self.model,
            "worker": self.worker,
            "attempt": self.attempt,
            "metadata": dict(self.metadata),
        }

    def started(self) -> StartedEvent:
        """The event that says generation is about to begin."""
        return StartedEvent.model_validate(self.event_fields())

    def failed(self, error: ErrorInfo) -> FailedEvent:
        """The terminal event of a job that ends without images."""
        return FailedEvent.model_validate({**self.event_fields(), "error": error, "timings": self.timings()})

    def cancelled(self, error: ErrorInfo) -> CancelledEvent:
        """The terminal event of a job its caller cancelled."""
        return CancelledEvent.model_validate({**self.event_fields(), "error": error})

    def timings(self) -> Timings:
        """Seconds per phase so far; `queued` from the publish timestamp when the producer set one."""
        queued = None
        if self.published_at is not None:
            queued = max(0.0, (utc_now() - self.published_at).total_seconds() - self.elapsed_s())
        return Timings(
            queued=queued,
            generate=self.phase_s.get("generate"),
            encode=self.phase_s.get("encode"),
            upload=self.phase_s.get("upload"),
            total=self.elapsed_s(),
        )

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block as phase `name` (generate, encode, upload)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.phase_s[name] = time.monotonic() - start

    def elapsed_s(self) -> float:
        """Seconds since this worker took the delivery."""
        return time.monotonic() - self.started_monotonic
