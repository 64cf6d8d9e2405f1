"""The `/token` and `/v1` routes: submit, follow, wait for, cancel and list a caller's jobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.security import OAuth2PasswordRequestForm

from sdqueue.bridge._auth import BEARER_SECURITY, CurrentUser, issue_access_token, request_user
from sdqueue.bridge._bodies import json_body, read_json
from sdqueue.bridge._errors import CONFLICT, NOT_FOUND, BridgeError, error_responses
from sdqueue.bridge._jobs import (
    build_request,
    cancel_job,
    job_events,
    job_links,
    job_status,
    owned_marker,
    recent_jobs,
    submit_job,
    wait_for_job,
)
from sdqueue.bridge._markers import new_bridge_job_id
from sdqueue.bridge._models import (
    CancelAccepted,
    Img2ImgForm,
    JobAccepted,
    JobList,
    JobStatus,
    TokenResponse,
    Txt2ImgBody,
)
from sdqueue.bridge._state import BridgeState, get_state, state_of
from sdqueue.bridge._uploads import image_extension, read_upload
from sdqueue.contracts import ErrorCode, JobEvent

State = Annotated[BridgeState, Depends(get_state)]
JOB_ID_PATH = r"^[A-Za-z0-9_-]{1,64}$"
JobId = Annotated[str, Path(pattern=JOB_ID_PATH, description="the job id the bridge assigned")]
LANE_PATHS = ("/v1/txt2img",)  # served by `AcceptLane`: each endpoint takes only the request


router = APIRouter()


@router.post("/token", response_model=TokenResponse, tags=["auth"], responses=error_responses(400, 401))
async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], state: State) -> TokenResponse:
    """OAuth2 password flow: a user name and password from the user store for a bearer token."""
    if not await _verify(state, form.username, form.password):
        raise BridgeError(
            ErrorCode.UNAUTHENTICATED, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"}
        )
    bridge = state.settings.bridge
    return TokenResponse(
        access_token=issue_access_token(form.username, bridge=bridge), expires_in=bridge.access_token_ttl_s
    )


async def _verify(state: BridgeState, username: str, password: str) -> bool:
    return await asyncio.to_thread(state.users.verify, username, password)


@router.post(
    "/v1/txt2img",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 422, 503),
    openapi_extra={**json_body(Txt2ImgBody), **BEARER_SECURITY},
)
async def txt2img(request: Request) -> Response:
    """Queue a txt2img job: the generation request's fields without `job_id`, which the bridge assigns."""
    # The hot path under load: caller, body and state are read here rather than solved as dependencies, so that
    # `AcceptLane` can await this function directly.
    user = request_user(request)
    body = await read_json(request, Txt2ImgBody)
    job_id = new_bridge_job_id()
    generation = build_request({**body.model_dump(exclude_unset=True), "mode": "txt2img"}, job_id=job_id)
    await submit_job(generation, owner=user, state=state_of(request))
    return accepted(job_id)


@router.post(
    "/v1/img2img",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 413, 422, 503),
)
async def img2img(
    form: Annotated[Img2ImgForm, Form()],
    image: Annotated[UploadFile, File(description="init image: PNG, JPEG or WebP")],
    user: CurrentUser,
    state: State,
) -> Response:
    """Queue an img2img job: the `image` file plus the request's fields as form fields."""
    job_id = new_bridge_job_id()
    init = await upload_init(image, job_id=job_id, state=state)
    request = build_request(
        {**form.model_dump(exclude_unset=True), "mode": "img2img", "init_image": init}, job_id=job_id
    )
    await submit_job(request, owner=user, state=state)
    return accepted(job_id)


def accepted(job_id: str) -> Response:
    """The `202` answer for a queued job, rendered by pydantic directly (the hot path skips FastAPI's second pass)."""
    body = JobAccepted(job_id=job_id, links=job_links(job_id)).model_dump_json()
    return Response(body, status_code=202, media_type="application/json")


async def upload_init(image: UploadFile, *, job_id: JobId, state: BridgeState) -> dict[str, str]:
    """Check the uploaded init image and put it at `inputs/<job_id>/init.<ext>`; returns its wire reference."""
    data = await read_upload(image, max_bytes=state.settings.bridge.max_upload_bytes)
    extension = await image_extension(data, max_pixels=state.settings.limits.max_init_image_pixels)
    reference = await state.client.upload_init_image(job_id, data, extension=extension)
    return reference.model_dump()


@router.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=error_responses(400, 401, 503))
async def list_jobs(
    user: CurrentUser, state: State, limit: Annotated[int | None, Query(ge=1, le=100)] = None
) -> JobList:
    """The caller's recent jobs, newest first: its history of prompts and images."""
    count = limit or state.settings.bridge.recent_jobs
    return JobList(jobs=await recent_jobs(user, limit=count, state=state))


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, tags=["jobs"], responses=error_responses(400, 401, 404, 503))
async def get_job(job_id: JobId, user: CurrentUser, state: State) -> JobStatus:
    """The job's status: `queued`, `running` with progress, or its terminal record in `result`."""
    return await job_status(await owned_marker(job_id, owner=user, state=state), state=state)


@router.get(
    "/v1/jobs/{job_id}/wait", response_model=JobStatus, tags=["jobs"], responses=error_responses(400, 401, 404, 503)
)
async def wait_job(
    job_id: JobId,
    user: CurrentUser,
    state: State,
    timeout_s: Annotated[
        float, Query(alias="timeout", ge=0, le=3600, description="seconds to wait at most (capped by the bridge)")
    ] = 30.0,
) -> JobStatus:
    """Block until the job is terminal or `timeout` seconds pass; answers its status either way."""
    marker = await owned_marker(job_id, owner=user, state=state)
    return await wait_for_job(marker, state=state, timeout_s=min(timeout_s, state.settings.bridge.max_wait_s))


@router.get(
    "/v1/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `started`, `progress`, then one terminal event; `data` is its JSON",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: progress\ndata: {"type": "progress", "step": 3, "steps": 25}\n\n',
                }
            },
        },
        **error_responses(400, 401, 404, 503),
    },
)
async def stream_events(job_id: JobId, user: CurrentUser, state: State) -> StreamingResponse:
    """Server-Sent Events of the job's events, ending with the terminal one."""
    marker = await owned_marker(job_id, owner=user, state=state)
    stream = job_events(marker, state=state, timeout_s=state.settings.bridge.max_wait_s)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse(stream, state=state), media_type="text/event-stream", headers=headers)


async def _sse(events: AsyncIterator[JobEvent | None], *, state: BridgeState) -> AsyncIterator[str]:
    state.metrics.streams.inc()
    try:
        yield ": connected\n\n"
        async for event in events:
            yield ": keep-alive\n\n" if event is None else _sse_frame(event)
    finally:
        state.metrics.streams.dec()


def _sse_frame(event: JobEvent) -> str:
    data = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return f"event: {event.type}\ndata: {data}\n\n"


@router.get(
    "/v1/jobs/{job_id}/images/{index}",
    status_code=307,
    response_class=RedirectResponse,
    tags=["jobs"],
    responses={307: {"description": "redirect to the image's URL"}, **error_responses(400, 401, 404, 409, 503)},
)
async def image_redirect(
    job_id: JobId, index: Annotated[int, Path(ge=0, le=7)], user: CurrentUser, state: State
) -> RedirectResponse:
    """Redirect to one generated image's URL (presigned, or the public base URL)."""
    status = await job_status(await owned_marker(job_id, owner=user, state=state), state=state)
    if status.result is None or status.result.type != "succeeded":
        raise BridgeError(CONFLICT, f"the job has no images ({status.status})")
    images = {image.index: image for image in status.result.images}
    if index not in images:
        raise BridgeError(NOT_FOUND, "no image with that index")
    return RedirectResponse(images[index].url, status_code=307)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 409, 503),
)
async def cancel(job_id: JobId, user: CurrentUser, state: State) -> CancelAccepted:
    """Cancel the caller's job: a queued job never starts, a running one stops at its next step."""
    await cancel_job(await owned_marker(job_id, owner=user, state=state), state=state)
    return CancelAccepted(job_id=job_id)
