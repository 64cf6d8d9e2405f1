"""Events the worker publishes to `sdqueue.events` about a job, and the result record stored per job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from sdqueue.contracts.adapters import AppliedAdapter
from sdqueue.contracts.errors import ErrorInfo
from sdqueue.contracts.request import JobId, OutputFormat

EventType = Literal["started", "progress", "succeeded", "failed", "cancelled"]
TERMINAL_EVENT_TYPES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
CONTENT_TYPES: dict[OutputFormat, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
MAX_PREVIEW_SIDE_PX = 256


def utc_now() -> datetime:
    """Return the current time, timezone-aware in UTC, as every event's `at` is."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    job_id: JobId
    model: str
    worker: str
    attempt: Annotated[int, Field(ge=1)]
    at: AwareDatetime = Field(default_factory=utc_now)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # The contract says `at` is UTC; an aware time in another zone is converted, not echoed with its offset.
        return value.astimezone(UTC)


class ImageInfo(BaseModel):
    """Where one generated image lives and what it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Annotated[int, Field(ge=0)]
    key: str
    url: str
    content_type: str
    width: int
    height: int
    seed: int
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]


class Timings(BaseModel):
    """Seconds spent in each phase; a phase the job never reached is null."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queued: float | None = None
    generate: float | None = None
    encode: float | None = None
    upload: float | None = None
    total: float | None = None


class StartedEvent(_Event):
    """The worker accepted the job (token and request valid) and is about to generate."""

    type: Literal["started"] = "started"


class PreviewImage(BaseModel):
    """A rough look at the images being denoised: a small WebP decoded cheaply from the latents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_type: Literal["image/webp"] = "image/webp"
    width: Annotated[int, Field(ge=1, le=MAX_PREVIEW_SIDE_PX)]
    height: Annotated[int, Field(ge=1, le=MAX_PREVIEW_SIDE_PX)]
    data: Annotated[str, Field(min_length=1, description="The WebP bytes, base64.")]


class ProgressEvent(_Event):
    """A denoising step finished; throttled to a few per second per job. With `previews: true` in the request,
    some carry a preview (at most every `preview_interval_s`)."""

    type: Literal["progress"] = "progress"
    step: Annotated[int, Field(ge=0)]
    steps: Annotated[int, Field(ge=1)]
    preview: PreviewImage | None = None


class SucceededEvent(_Event):
    """Terminal: every image is in the bucket."""

    type: Literal["succeeded"] = "succeeded"
    images: list[ImageInfo]
    timings: Timings
    warnings: list[str] = Field(default_factory=list)
    adapters: list[AppliedAdapter] = Field(
        default_factory=list, description="The adapters the images were generated with, as the request named them."
    )


class FailedEvent(_Event):
    """Terminal: the job will not produce images."""

    type: Literal["failed"] = "failed"
    error: ErrorInfo
    timings: Timings = Field(default_factory=Timings)


class CancelledEvent(_Event):
    """Terminal: the job was cancelled by its owner or an admin."""

    type: Literal["cancelled"] = "cancelled"
    error: ErrorInfo


JobEvent = Annotated[
    StartedEvent | ProgressEvent | SucceededEvent | FailedEvent | CancelledEvent,
    Field(discriminator="type"),
]
TerminalEvent = Annotated[SucceededEvent | FailedEvent | CancelledEvent, Field(discriminator="type")]

JOB_EVENT_ADAPTER: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)
TERMINAL_EVENT_ADAPTER: TypeAdapter[TerminalEvent] = TypeAdapter(TerminalEvent)


def parse_event(body: bytes | str) -> JobEvent:
    """Decode any event from its JSON bytes.

    Raises:
        pydantic.ValidationError: the body is not a known event.
    """
    return JOB_EVENT_ADAPTER.validate_json(body)


def parse_terminal_event(body: bytes | str) -> TerminalEvent:
    """Decode a terminal event, as stored in `jobs/<job_id>.json`.

    Raises:
        pydantic.ValidationError: the body is not a terminal event.
    """
    return TERMINAL_EVENT_ADAPTER.validate_json(body)


def is_terminal(event: JobEvent) -> bool:
    """Say whether no further event will follow this one for its job."""
    return event.type in TERMINAL_EVENT_TYPES
