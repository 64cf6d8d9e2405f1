"""The job path's collaborators as small protocols: the worker wires broker and bucket ones, unit tests in-memory ones.

Each names what the job path needs, not how it is done: durability (outage retries, confirms) is the
implementation's business, so the job path reads as the stages it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sdqueue.contracts import JobEvent, TerminalEvent
from sdqueue.worker.verify import Caller

if TYPE_CHECKING:
    from sdqueue.worker.consume import Delivery
    from sdqueue.worker.generate import Family, GeneratedImages, GenerationSpec, StepPreview


@dataclass(frozen=True)
class StoredRecord:
    """A job's result record as found in the store, with the caller that owns it."""

    event: TerminalEvent
    owner: Caller


class EventSink(Protocol):
    """Publishes a job's events, confirmed, to the events exchange and the request's `reply_to`."""

    async def publish(self, event: JobEvent, *, reply_to: str | None, correlation_id: str | None) -> None:
        """Raises `PublishFailed` when the event was not confirmed."""


class RecordStore(Protocol):
    """Job id claims and result records: created once, first writer wins."""

    async def claim(self, job_id: str, caller: Caller) -> bool:
        """Create the job id's claim for `caller`; False when a claim already exists."""

    async def claimant(self, job_id: str) -> Caller | None:
        """The caller holding the job id's claim, None when there is none (or it is unreadable)."""

    async def read(self, job_id: str) -> StoredRecord | None:
        """The job's result record, None when it has none yet."""

    async def write_once(self, job_id: str, event: TerminalEvent, *, owner: Caller) -> bool:
        """Store the job's result record unless one exists; False when it did."""


class ObjectStore(Protocol):
    """The bucket as the job path sees it: init images in, encoded images out."""

    async def read(self, key: str, *, max_bytes: int) -> bytes | None:
        """At most `max_bytes + 1` bytes of the object, None when it does not exist."""

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store `data` under `key`, replacing what is there."""

    def url(self, key: str) -> str:
        """Where a caller fetches `key` (presigned or public)."""


class Requeue(Protocol):
    """Re-publishes a request copy: to the retry queue after a backoff, or to the overflow lane."""

    async def retry_later(self, delivery: Delivery, *, backoff_s: float) -> bool:
        """False when the copy was not confirmed (the caller then requeues the delivery)."""

    async def to_overflow(self, delivery: Delivery) -> bool:
        """False when the copy was not confirmed (the job then runs here)."""


class WebhookQueue(Protocol):
    """Queues a terminal event's signed webhook for the relay, confirmed."""

    async def enqueue(self, event: TerminalEvent, *, url: str, issuer: str) -> None:
        """Raises `PublishFailed` when the task was not confirmed."""


class Generates(Protocol):
    """Runs a generation spec (alone or in a micro-batch) off the event loop."""

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """The schedulers a request may name for this model."""

    @property
    def family(self) -> Family:
        """The model's family, whose defaults fill the fields a request and the operator leave out."""

    async def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: Callable[[StepPreview], None] | None = None,
        rank: int = 0,
    ) -> GeneratedImages:
        """Previews go to `on_preview` (on the generation thread) as the spec asks.

        Raises `Cancelled` when `should_stop` turned true before the images were done."""
