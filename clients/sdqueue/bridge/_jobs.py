"""Submitting jobs for a caller and reading their status: the row in the database, the record in the bucket.

The bucket's result record (`jobs/<job_id>.json`, written only by workers) is the one source of a job's terminal
state; events on the broker only carry progress, or say that the record is worth reading now. Image URLs are
presigned afresh from the record's keys on every read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from pydantic import ValidationError

from sdqueue.bridge._accounts import Account
from sdqueue.bridge._jobstore import JobRow
from sdqueue.bridge._models import JobLinks, JobState, JobStatus, Progress
from sdqueue.bridge._state import BridgeState
from sdqueue.client import ClientError, mint_token, request_body, request_message
from sdqueue.client.follow import follow_job
from sdqueue.config.limits import limit_violation
from sdqueue.contracts import (
    BridgeCode,
    ErrorCode,
    GenerationRequest,
    JobEvent,
    ProgressEvent,
    StartedEvent,
    SucceededEvent,
    TerminalEvent,
    utc_now,
)
from sdqueue.contracts.errors import BridgeError
from sdqueue.contracts.topology import output_key
from sdqueue.storage import object_url


def job_links(job_id: str) -> JobLinks:
    """The routes that follow one job."""
    base = f"/v1/jobs/{job_id}"
    return JobLinks(status=base, wait=f"{base}/wait", events=f"{base}/events", cancel=f"{base}/cancel")


def build_request(fields: Mapping[str, object], *, job_id: str) -> GenerationRequest:
    """The wire request for a caller's fields.

    Raises:
        BridgeError: `invalid_request` when the fields do not make a valid request.
    """
    try:
        return GenerationRequest.model_validate({"schema_version": 1, "job_id": job_id, **fields}, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BridgeError(ErrorCode.INVALID_REQUEST, f"{first.get('msg', 'invalid request')}") from exc


def check_limits(request: GenerationRequest, *, state: BridgeState) -> None:
    """Refuse at the edge what the worker would refuse: too many pixels, steps or images.

    Raises:
        BridgeError: `limits_exceeded`.
    """
    violation = limit_violation(request, limits=state.settings.limits)
    if violation is not None:
        raise BridgeError(ErrorCode.LIMITS_EXCEEDED, violation)


async def check_routable(request: GenerationRequest, *, state: BridgeState) -> None:
    """Refuse a request no worker queue would take, before anything is stored for it.

    Raises:
        BridgeError: `unknown_model`.
    """
    if not await state.client.is_routable(request.model):
        raise BridgeError(ErrorCode.UNKNOWN_MODEL, f"no worker serves model {request.model!r}")


async def submit_job(request: GenerationRequest, *, owner: Account, state: BridgeState) -> JobRow:
    """Commit the job's row under its owner, then publish it with a token minted for the owner.

    The row exists before the broker sees the job, so a bridge that dies after its `202` loses nothing; a publish
    that fails removes the row again.

    Raises:
        ClientError: the broker refused, could not route or did not confirm.
    """
    check_limits(request, state=state)
    row = JobRow(
        job_id=request.job_id,
        owner_id=owner.user_id,
        created_at=utc_now(),
        mode=request.mode,
        model=request.model,
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
    )
    await state.jobs.add(row)
    try:
        await _publish(request, owner=owner, state=state)
    except ClientError:
        await state.jobs.delete(row.job_id)
        raise
    state.metrics.jobs.labels(mode=request.mode).inc()
    return row


async def _publish(request: GenerationRequest, *, owner: Account, state: BridgeState) -> None:
    # Not `client.submit`: no reply queue, since the hub already sees every event.
    body = request_body(request)
    token = mint_token(
        body,
        job_id=request.job_id,
        subject=owner.user_id,
        auth=state.settings.auth,
        ttl_s=state.settings.bridge.job_wait_ttl_s,
    )
    message = request_message(body, job_id=request.job_id, token=token)
    await state.client.publish_raw(message, routing_key=request.model)


async def owned_job(job_id: str, *, owner: Account, state: BridgeState) -> JobRow:
    """The caller's job: one database read, never a wait.

    Raises:
        BridgeError: `not_found` when the job is not the caller's or does not exist.
    """
    row = await state.jobs.get(job_id, owner_id=owner.user_id)
    if row is None:
        raise BridgeError(BridgeCode.NOT_FOUND, "no such job")
    return row


async def current_record(row: JobRow, *, state: BridgeState) -> TerminalEvent | None:
    """The job's result record with image URLs presigned now, or None while it has none; notes its status."""
    record = await state.client.read_record(row.job_id)
    if record is None:
        return None
    if row.status != record.type:
        await state.jobs.set_status(row.job_id, record.type)
    return with_fresh_urls(record, state=state)


def with_fresh_urls(record: TerminalEvent, *, state: BridgeState) -> TerminalEvent | None:
    """The record with each image's URL signed now from its key; None if a key lies outside the job's outputs."""
    if not isinstance(record, SucceededEvent):
        return record
    images = []
    for image in record.images:
        expected = output_key(record.job_id, image.index, image.key.rpartition(".")[2])
        if image.key != expected:
            return None
        url = object_url(state.s3, s3=state.settings.s3, key=image.key)
        images.append(image.model_copy(update={"url": url}))
    return record.model_copy(update={"images": images})


async def job_status(row: JobRow, *, state: BridgeState) -> JobStatus:
    """The job's status: its record if it finished, else the progress the event stream last reported."""
    record = await current_record(row, state=state)
    return status_from(row, record if record is not None else state.hub.latest(row.job_id))


def status_from(row: JobRow, event: JobEvent | None) -> JobStatus:
    """The status a job's record or latest progress event implies (a terminal event is trusted from records only)."""
    status: JobState = "queued"
    progress = None
    result: TerminalEvent | None = None
    if isinstance(event, ProgressEvent):
        status, progress = "running", Progress(step=event.step, steps=event.steps)
    elif isinstance(event, StartedEvent):
        status, progress = "running", Progress(step=0, steps=row.steps)
    elif event is not None:
        status, result = event.type, event
    return JobStatus(
        job_id=row.job_id,
        status=status,
        mode=row.mode,
        prompt=row.prompt,
        created_at=row.created_at,
        progress=progress,
        result=result,
        links=job_links(row.job_id),
    )


async def recent_jobs(owner: Account, *, limit: int, state: BridgeState) -> list[JobStatus]:
    """The caller's newest jobs with their status, newest first."""
    rows = await state.jobs.recent(owner.user_id, limit=limit)
    return [await job_status(row, state=state) for row in rows]


async def job_events(row: JobRow, *, state: BridgeState, timeout_s: float) -> AsyncIterator[JobEvent | None]:
    """Yield the job's progress, then its record; None now and then while nothing happens (a keep-alive).

    A terminal event on the broker only makes the record worth reading: without a record it is ignored. Stops
    after `timeout_s` without a record.
    """
    async with state.hub.subscribe(row.job_id) as queue:
        record = await current_record(row, state=state)
        if record is not None:
            yield record
            return
        latest = state.hub.latest(row.job_id)
        if latest is not None:
            yield latest
        async for event in follow_job(
            queue,
            read_record=lambda: current_record(row, state=state),
            timeout_s=timeout_s,
            allow_terminal_events=False,  # the record is the truth (events may also be lost in a reconnect)
        ):
            yield event


async def wait_for_job(row: JobRow, *, state: BridgeState, timeout_s: float) -> JobStatus:
    """The job's status once it has a record, or its current status after `timeout_s`."""
    last: JobEvent | None = None
    async for event in job_events(row, state=state, timeout_s=timeout_s):
        if event is not None:
            last = event
    return status_from(row, last if last is not None else state.hub.latest(row.job_id))


async def cancel_job(row: JobRow, *, owner: Account, state: BridgeState) -> None:
    """Send the cancel command for the caller's job.

    Raises:
        BridgeError: `conflict` when the job already ended; `unavailable` when no worker listens.
    """
    if await state.client.read_record(row.job_id) is not None:
        raise BridgeError(BridgeCode.CONFLICT, "the job has already finished")
    if not await state.client.cancel(row.job_id, subject=owner.user_id, reason="cancelled through the bridge"):
        raise BridgeError(BridgeCode.UNAVAILABLE, "no worker is listening for cancel commands")
