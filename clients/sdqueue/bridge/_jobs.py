"""Submitting jobs for a caller and reading their status, from the bucket and the event stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

from pydantic import ValidationError

from sdqueue.bridge._errors import CONFLICT, NOT_FOUND, UNAVAILABLE, BridgeError
from sdqueue.bridge._markers import JobMarker, get_marker, minted_at_s, recent_job_ids
from sdqueue.bridge._models import JobLinks, JobState, JobStatus, Progress
from sdqueue.bridge._state import BridgeState
from sdqueue.client import mint_token, request_body, request_message
from sdqueue.config.limits import limit_violation
from sdqueue.contracts import (
    ErrorCode,
    GenerationRequest,
    JobEvent,
    ProgressEvent,
    StartedEvent,
    TerminalEvent,
    is_terminal,
    utc_now,
)

RECORD_POLL_INTERVAL_S = 5.0
MARKER_POLL_S = 0.25


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


async def submit_job(request: GenerationRequest, *, owner: str, state: BridgeState) -> JobMarker:
    """Publish the job with a token minted for the owner, then note it under its owner in the background.

    Raises:
        ClientError: the broker refused or did not confirm.
    """
    check_limits(request, state=state)
    await _publish(request, owner=owner, state=state)
    marker = JobMarker(
        job_id=request.job_id,
        owner=owner,
        mode=request.mode,
        prompt=request.prompt,
        model=request.model,
        width=request.width,
        height=request.height,
        steps=request.steps,
        created_at=utc_now(),
    )
    state.markers.write(marker)
    state.metrics.jobs.labels(mode=request.mode).inc()
    return marker


async def _publish(request: GenerationRequest, *, owner: str, state: BridgeState) -> None:
    # Not `client.submit`: no reply queue, since the hub already sees every event.
    body = request_body(request)
    token = mint_token(
        body, job_id=request.job_id, subject=owner, auth=state.settings.auth, ttl_s=state.settings.bridge.job_wait_ttl_s
    )
    message = request_message(body, job_id=request.job_id, token=token)
    await state.client.publish_raw(message, routing_key=request.model)


async def owned_marker(job_id: str, *, owner: str, state: BridgeState) -> JobMarker:
    """The caller's marker of a job.

    Raises:
        BridgeError: `not_found` when the job is not the caller's or does not exist.
    """
    marker = await _find_marker(owner, job_id, state=state)
    if marker is None:
        raise BridgeError(NOT_FOUND, "no such job")
    return marker


async def job_status(marker: JobMarker, *, state: BridgeState) -> JobStatus:
    """The job's status: its record if it finished, else what the event stream last said."""
    record = await state.client.read_record(marker.job_id)
    return status_from(marker, record if record is not None else state.hub.latest(marker.job_id))


def status_from(marker: JobMarker, event: JobEvent | None) -> JobStatus:
    """The status a job's latest known event implies."""
    status: JobState = "queued"
    progress = None
    result: TerminalEvent | None = None
    if isinstance(event, ProgressEvent):
        status, progress = "running", Progress(step=event.step, steps=event.steps)
    elif isinstance(event, StartedEvent):
        status, progress = "running", Progress(step=0, steps=marker.steps)
    elif event is not None:
        status, result = event.type, event
    return JobStatus(
        job_id=marker.job_id,
        status=status,
        mode=marker.mode,
        prompt=marker.prompt,
        created_at=marker.created_at,
        progress=progress,
        result=result,
        links=job_links(marker.job_id),
    )


async def recent_jobs(owner: str, *, limit: int, state: BridgeState) -> list[JobStatus]:
    """The caller's newest jobs with their status, newest first."""
    pending = [marker.job_id for marker in state.markers.pending_for(owner)]
    stored = await recent_job_ids(owner, limit=limit, s3=state.settings.s3, client=state.s3)
    job_ids = sorted({*pending, *stored})[:limit]  # ids sort newest first
    markers = await asyncio.gather(*(_find_marker(owner, job_id, state=state) for job_id in job_ids))
    found = [marker for marker in markers if marker is not None]
    return list(await asyncio.gather(*(job_status(marker, state=state) for marker in found)))


async def _find_marker(owner: str, job_id: str, *, state: BridgeState) -> JobMarker | None:
    """The caller's marker: still being stored here, already in the bucket, or soon there.

    A job accepted by another bridge process or replica has no marker anywhere for a moment after its `202`; a
    read of it waits until the marker lands or `bridge.marker_wait_s` after the job was accepted.
    """
    marker = state.markers.pending(owner, job_id) or await _stored_marker(owner, job_id, state=state)
    minted_s = minted_at_s(job_id)
    if marker is not None or minted_s is None:
        return marker
    give_up_s = minted_s + state.settings.bridge.marker_wait_s
    while marker is None and time.time() < give_up_s:
        await asyncio.sleep(min(MARKER_POLL_S, max(give_up_s - time.time(), 0.0)))
        marker = await _stored_marker(owner, job_id, state=state)
    return marker


async def _stored_marker(owner: str, job_id: str, *, state: BridgeState) -> JobMarker | None:
    return await get_marker(owner, job_id, s3=state.settings.s3, client=state.s3)


async def job_events(marker: JobMarker, *, state: BridgeState, timeout_s: float) -> AsyncIterator[JobEvent | None]:
    """Yield the job's events up to its terminal one; None now and then while nothing happens (a keep-alive).

    Stops after `timeout_s` without a terminal event.
    """
    deadline = time.monotonic() + timeout_s
    async with state.hub.subscribe(marker.job_id) as queue:
        record = await state.client.read_record(marker.job_id)
        if record is not None:
            yield record
            return
        latest = state.hub.latest(marker.job_id)
        if latest is not None and not is_terminal(latest):
            yield latest
        while (remaining := deadline - time.monotonic()) > 0:
            event = await _next_event(
                marker.job_id, queue, timeout_s=min(remaining, RECORD_POLL_INTERVAL_S), state=state
            )
            yield event
            if event is not None and is_terminal(event):
                return


async def _next_event(
    job_id: str, queue: asyncio.Queue[JobEvent], *, timeout_s: float, state: BridgeState
) -> JobEvent | None:
    try:
        async with asyncio.timeout(timeout_s):
            return await queue.get()
    except TimeoutError:
        # Events can be missed across a broker reconnect; the record is the durable truth.
        return await state.client.read_record(job_id)


async def wait_for_job(marker: JobMarker, *, state: BridgeState, timeout_s: float) -> JobStatus:
    """The job's status once it is terminal, or its current status after `timeout_s`."""
    last: JobEvent | None = None
    async for event in job_events(marker, state=state, timeout_s=timeout_s):
        if event is not None:
            last = event
    return status_from(marker, last if last is not None else state.hub.latest(marker.job_id))


async def cancel_job(marker: JobMarker, *, state: BridgeState) -> None:
    """Send the cancel command for the caller's job.

    Raises:
        BridgeError: `conflict` when the job already ended; `unavailable` when no worker listens.
    """
    if await state.client.read_record(marker.job_id) is not None:
        raise BridgeError(CONFLICT, "the job has already finished")
    if not await state.client.cancel(marker.job_id, subject=marker.owner, reason="cancelled through the bridge"):
        raise BridgeError(UNAVAILABLE, "no worker is listening for cancel commands")
