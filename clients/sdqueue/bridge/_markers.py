"""What the bridge writes to the bucket about the jobs it submits: one small marker per job, under its owner.

`bridge/users/<owner>/jobs/<job_id>.json`. A job is a caller's exactly when its marker exists under that caller,
so ownership and history survive a restart. Job ids begin with a reversed timestamp, so a plain listing of a
caller's prefix returns the newest jobs first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from sdqueue.client import StorageUnavailable
from sdqueue.config import S3Settings
from sdqueue.contracts import Mode

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MARKER_PREFIX = "bridge/users"
MARKER_WRITE_ATTEMPTS = 8
MARKER_RETRY_S = 0.5
# A marker's put waits until no job has been accepted for MARKER_QUIET_S (at most MARKER_MAX_DELAY_S), so a burst
# of accepts is not slowed by the bucket writes it causes: boto3 costs milliseconds of CPU per call, taken from the
# same process. Reads answer from the pending marker meanwhile.
MARKER_QUIET_S = 0.2
MARKER_MAX_DELAY_S = 3.0
MARKER_WRITES_AT_ONCE = 4
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# 2^44 ms is about the year 2527: the reversed timestamp stays 11 hex digits long until then.
REVERSE_EPOCH_MS = 2**44
REVERSED_MS_DIGITS = 11
MAX_MARKER_BYTES = 64 * 1024
T = TypeVar("T")


class JobMarker(BaseModel):
    """The bridge's note about a job it submitted: who owns it and what was asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    owner: str
    mode: Mode
    prompt: str = Field(max_length=4000)
    model: str
    width: int
    height: int
    steps: int
    created_at: AwareDatetime


def new_bridge_job_id(*, now_s: float | None = None) -> str:
    """A fresh job id whose text sorts newest first: reversed milliseconds, then randomness."""
    now_ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{REVERSE_EPOCH_MS - now_ms:0{REVERSED_MS_DIGITS}x}-{uuid.uuid4().hex}"


def minted_at_s(job_id: str) -> float | None:
    """When `new_bridge_job_id` made this id (Unix seconds), or None for an id of another form."""
    reversed_ms, dash, _ = job_id.partition("-")
    if not dash or len(reversed_ms) != REVERSED_MS_DIGITS:
        return None
    try:
        return (REVERSE_EPOCH_MS - int(reversed_ms, 16)) / 1000
    except ValueError:
        return None


def marker_key(owner: str, job_id: str) -> str:
    """The marker's object key (user names are restricted to key-safe characters)."""
    return f"{MARKER_PREFIX}/{owner}/jobs/{job_id}.json"


async def put_marker(marker: JobMarker, *, s3: S3Settings, client: S3Client) -> None:
    """Store a job's marker.

    Raises:
        StorageUnavailable: the bucket refused or did not answer.
    """
    body = marker.model_dump_json().encode()
    key = marker_key(marker.owner, marker.job_id)
    await _call(lambda: client.put_object(Bucket=s3.bucket, Key=key, Body=body, ContentType="application/json"))


async def get_marker(owner: str, job_id: str, *, s3: S3Settings, client: S3Client) -> JobMarker | None:
    """The caller's marker for a job, or None when the job is not the caller's (or does not exist).

    Raises:
        StorageUnavailable: the bucket refused or did not answer.
    """

    def read() -> bytes | None:
        try:
            response = client.get_object(Bucket=s3.bucket, Key=marker_key(owner, job_id))
        except BotoClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
                return None
            raise
        return response["Body"].read(MAX_MARKER_BYTES)

    data = await _call(read)
    return None if data is None else _parse(data)


async def recent_job_ids(owner: str, *, limit: int, s3: S3Settings, client: S3Client) -> list[str]:
    """The caller's newest job ids, newest first.

    Raises:
        StorageUnavailable: the bucket refused or did not answer.
    """
    prefix = f"{MARKER_PREFIX}/{owner}/jobs/"
    response = await _call(lambda: client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix, MaxKeys=limit))
    keys = [entry.get("Key", "") for entry in response.get("Contents", [])]
    return sorted(key.removeprefix(prefix).removesuffix(".json") for key in keys if key)


async def bucket_is_reachable(*, s3: S3Settings, client: S3Client) -> bool:
    """Whether the bucket answers a HEAD request."""
    try:
        await _call(lambda: client.head_bucket(Bucket=s3.bucket))
    except StorageUnavailable:
        return False
    return True


def _parse(data: bytes) -> JobMarker | None:
    try:
        return JobMarker.model_validate_json(data)
    except ValidationError:
        return None


async def _call(call: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(call)
    except (BotoCoreError, BotoClientError) as exc:
        raise StorageUnavailable("the bucket did not answer") from exc


class MarkerWriter:
    """Stores markers in the background, so accepting a job waits for the broker only; reads see pending markers.

    A pending marker lives only in this process until its put succeeds (retried with backoff). `drain` at
    shutdown waits for them; a crash in between loses the note, not the job (its record names the owner too).
    """

    def __init__(
        self,
        *,
        s3: S3Settings,
        client: S3Client,
        quiet_s: float = MARKER_QUIET_S,
        max_delay_s: float = MARKER_MAX_DELAY_S,
    ) -> None:
        self._s3 = s3
        self._client = client
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._last_write_s = 0.0
        self._pending: dict[tuple[str, str], JobMarker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MARKER_WRITES_AT_ONCE)

    def write(self, marker: JobMarker) -> None:
        """Start storing a marker; until it is stored, `pending` returns it."""
        self._last_write_s = time.monotonic()
        self._pending[(marker.owner, marker.job_id)] = marker
        task = asyncio.create_task(self._store(marker), name=f"marker:{marker.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pending(self, owner: str, job_id: str) -> JobMarker | None:
        """The caller's marker for a job if it is still being stored."""
        return self._pending.get((owner, job_id))

    def pending_for(self, owner: str) -> list[JobMarker]:
        """The caller's markers still being stored."""
        return [marker for (marker_owner, _), marker in self._pending.items() if marker_owner == owner]

    async def drain(self, *, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the markers still being stored."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _store(self, marker: JobMarker) -> None:
        await self._quiet()
        for attempt in range(MARKER_WRITE_ATTEMPTS):
            try:
                async with self._slots:
                    await put_marker(marker, s3=self._s3, client=self._client)
            except StorageUnavailable:
                await asyncio.sleep(MARKER_RETRY_S * 2**attempt)
            else:
                self._pending.pop((marker.owner, marker.job_id), None)
                return
        log.error(
            "could not store the marker of job %s; it stays visible here until the bridge restarts", marker.job_id
        )

    async def _quiet(self) -> None:
        """Return once no marker has been written for `quiet_s`, or `max_delay_s` from now, whichever comes first."""
        deadline_s = time.monotonic() + self._max_delay_s
        # A timer that each write pushes back, up to the deadline: a poll of nothing an Event could signal.
        while (wait_s := min(self._last_write_s + self._quiet_s, deadline_s) - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait_s)
