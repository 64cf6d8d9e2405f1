"""The `/token` and `/v1` routes: submit, follow, wait for, cancel and list a caller's jobs; list the served models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.security import OAuth2PasswordRequestForm
from starlette.background import BackgroundTask

from sdqueue.bridge._accounts import Account, Throttled, WrongCredentials
from sdqueue.bridge._auth import CurrentUser, issue_access_token
from sdqueue.bridge._bodies import form_body, json_body, read_form, read_json
from sdqueue.bridge._errors import error_responses
from sdqueue.bridge._fleet import list_adapters, list_models, pin_adapters
from sdqueue.bridge._jobs import (
    build_request,
    cancel_job,
    check_limits,
    check_routable,
    current_record,
    job_events,
    job_links,
    job_status,
    owned_job,
    recent_jobs,
    submit_job,
    wait_for_job,
)
from sdqueue.bridge._jobstore import JobRow
from sdqueue.bridge._models import (
    AdapterList,
    CancelAccepted,
    GenerationParams,
    Img2ImgForm,
    InpaintForm,
    JobAccepted,
    JobList,
    JobStatus,
    ModelList,
    TokenResponse,
    Txt2ImgBody,
)
from sdqueue.bridge._state import BridgeState, get_state
from sdqueue.bridge._streams import StreamSlot
from sdqueue.bridge._uploads import image_extension
from sdqueue.client import new_job_id
from sdqueue.contracts import BridgeCode, ErrorCode, InitImageKey, JobEvent, Mode
from sdqueue.contracts.errors import BridgeError
from sdqueue.contracts.topology import input_key, mask_key

State = Annotated[BridgeState, Depends(get_state)]
JOB_ID_PATH = r"^[A-Za-z0-9_-]{1,64}$"
JobId = Annotated[str, Path(pattern=JOB_ID_PATH, description="the job id the bridge assigned")]
IMAGE_FILE = "init image: PNG, JPEG or WebP"
MASK_FILE = "mask: PNG, JPEG or WebP; white is repainted, black is kept"
# The request fields an uploaded image can fill: what errors call it, and the key it is stored under.
UPLOADED_INPUTS = {"init_image": ("init image", input_key), "mask_image": ("mask", mask_key)}


router = APIRouter()


@router.post("/token", response_model=TokenResponse, tags=["auth"], responses=error_responses(400, 401, 429))
async def token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], state: State) -> TokenResponse:
    """OAuth2 password flow: a user name and password for a bearer token; failures are throttled (`429`)."""
    try:
        account = await state.accounts.sign_in(form.username, form.password, address=client_address(request))
    except Throttled as exc:
        raise BridgeError(
            BridgeCode.TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc
    except WrongCredentials as exc:
        raise BridgeError(
            ErrorCode.UNAUTHENTICATED, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"}
        ) from exc
    bridge = state.settings.bridge
    return TokenResponse(access_token=issue_access_token(account, bridge=bridge), expires_in=bridge.access_token_ttl_s)


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, as uvicorn's `--forwarded-allow-ips` resolves it)."""
    return request.client.host if request.client is not None else "unknown"


async def txt2img_body(request: Request, _: CurrentUser) -> Txt2ImgBody:
    """`POST /v1/txt2img`'s JSON body, read once the caller is authenticated."""
    return await read_json(request, Txt2ImgBody)


async def img2img_body(request: Request, _: CurrentUser, state: State) -> tuple[Img2ImgForm, bytes]:
    """`POST /v1/img2img`'s form fields and image, read once the caller is authenticated."""
    fields, images = await read_form(
        request, Img2ImgForm, files=("image",), max_file_bytes=state.settings.bridge.max_upload_bytes
    )
    return fields, images["image"]


async def inpaint_body(request: Request, _: CurrentUser, state: State) -> tuple[InpaintForm, dict[str, bytes]]:
    """`POST /v1/inpaint`'s form fields, image and mask, read once the caller is authenticated."""
    return await read_form(
        request, InpaintForm, files=("image", "mask"), max_file_bytes=state.settings.bridge.max_upload_bytes
    )


@router.post(
    "/v1/txt2img",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 413, 422, 503),
    openapi_extra=json_body(Txt2ImgBody),
)
async def txt2img(body: Annotated[Txt2ImgBody, Depends(txt2img_body)], user: CurrentUser, state: State) -> JobAccepted:
    """Queue a txt2img job: the generation request's fields without `job_id`, which the bridge assigns."""
    job_id = new_job_id()
    generation = build_request(wire_fields(body, mode="txt2img", state=state), job_id=job_id)
    await submit_job(generation, owner=user, state=state)
    return accepted(job_id)


@router.post(
    "/v1/img2img",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 413, 422, 503),
    openapi_extra=form_body(Img2ImgForm, files={"image": IMAGE_FILE}),
)
async def img2img(
    body: Annotated[tuple[Img2ImgForm, bytes], Depends(img2img_body)], user: CurrentUser, state: State
) -> JobAccepted:
    """Queue an img2img job: the `image` file plus the request's fields as form fields."""
    form, image = body
    job_id = new_job_id()
    fields = wire_fields(form, mode="img2img", state=state)
    await submit_with_images(fields, {"init_image": image}, job_id=job_id, owner=user, state=state)
    return accepted(job_id)


@router.post(
    "/v1/inpaint",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 413, 422, 503),
    openapi_extra=form_body(InpaintForm, files={"image": IMAGE_FILE, "mask": MASK_FILE}),
)
async def inpaint(
    body: Annotated[tuple[InpaintForm, dict[str, bytes]], Depends(inpaint_body)], user: CurrentUser, state: State
) -> JobAccepted:
    """Queue an inpaint job: the `image` and `mask` files plus the request's fields as form fields."""
    form, files = body
    job_id = new_job_id()
    fields = wire_fields(form, mode="inpaint", state=state)
    images = {"init_image": files["image"], "mask_image": files["mask"]}
    await submit_with_images(fields, images, job_id=job_id, owner=user, state=state)
    return accepted(job_id)


def wire_fields(params: GenerationParams, *, mode: Mode, state: BridgeState) -> dict[str, object]:
    """The request's fields as the caller set them, in `mode`, with each adapter pinned to a file's sha256.

    Raises:
        BridgeError: `invalid_request` for an adapter no live worker of the model holds, or a key without sha256.
    """
    fields: dict[str, object] = {**params.model_dump(exclude_unset=True, exclude={"adapters"}), "mode": mode}
    if params.adapters:
        fields["adapters"] = pin_adapters(params.adapters, model=params.model, fleet=state.hub.fleet.workers())
    return fields


def accepted(job_id: str) -> JobAccepted:
    """The `202` answer for a queued job."""
    return JobAccepted(job_id=job_id, links=job_links(job_id))


async def submit_with_images(
    fields: Mapping[str, object], images: Mapping[str, bytes], *, job_id: str, owner: Account, state: BridgeState
) -> JobRow:
    """Validate and route a job with uploaded images (request field -> bytes: `init_image`, `mask_image`), then store
    the images and submit the job.

    The images are stored only for a request that is valid, within the limits and routable, so a refused request
    leaves nothing in the bucket; an upload or a publish that fails removes what was stored.

    Raises:
        BridgeError: the request, an image or its routing is refused.
        SdqueueError: the bucket or the broker failed.
    """
    max_pixels = state.settings.limits.max_init_image_pixels
    extensions = {
        field: await image_extension(data, what=UPLOADED_INPUTS[field][0], max_pixels=max_pixels)
        for field, data in images.items()
    }
    references = {field: InitImageKey(key=UPLOADED_INPUTS[field][1](job_id, ext)) for field, ext in extensions.items()}
    request = build_request({**fields, **{f: ref.model_dump() for f, ref in references.items()}}, job_id=job_id)
    check_limits(request, state=state)
    await check_routable(request, state=state)
    stored: list[InitImageKey] = []
    try:
        for field, data in images.items():
            upload = state.client.upload_mask_image if field == "mask_image" else state.client.upload_init_image
            stored.append(references[field])  # before the put: a put that fails half-way may still leave an object
            await upload(job_id, data, extension=extensions[field])
        return await submit_job(request, owner=owner, state=state)
    except BaseException:
        for reference in stored:
            await state.client.delete_init_image(reference)
        raise


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=error_responses(401))
async def models(_: CurrentUser, state: State) -> ModelList:
    """The model aliases live workers serve (from their heartbeats), each with its family's defaults."""
    return list_models(state.hub.fleet.workers())


@router.get("/v1/adapters", response_model=AdapterList, tags=["models"], responses=error_responses(401))
async def adapters(_: CurrentUser, state: State) -> AdapterList:
    """The named adapters live workers hold (from their heartbeats): a request names one, the bridge pins its sha256."""
    return list_adapters(state.hub.fleet.workers())


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
    return await job_status(await owned_job(job_id, owner=user, state=state), state=state)


@router.get(
    "/v1/jobs/{job_id}/wait",
    response_model=JobStatus,
    tags=["jobs"],
    responses=error_responses(400, 401, 404, 429, 503),
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
    row = await owned_job(job_id, owner=user, state=state)
    with state.streams.take(user.user_id):
        return await wait_for_job(row, state=state, timeout_s=min(timeout_s, state.settings.bridge.max_wait_s))


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
        **error_responses(400, 401, 404, 429, 503),
    },
)
async def stream_events(job_id: JobId, user: CurrentUser, state: State) -> StreamingResponse:
    """Server-Sent Events of the job's events, ending with its record."""
    row = await owned_job(job_id, owner=user, state=state)
    slot = state.streams.take(user.user_id)
    stream = job_events(row, state=state, timeout_s=state.settings.bridge.max_wait_s)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _sse(stream, slot=slot, state=state),
        media_type="text/event-stream",
        headers=headers,
        background=BackgroundTask(slot.release),  # also when the caller leaves before the stream starts
    )


async def _sse(events: AsyncIterator[JobEvent | None], *, slot: StreamSlot, state: BridgeState) -> AsyncIterator[str]:
    state.metrics.streams.inc()
    try:
        yield ": connected\n\n"
        async for event in events:
            yield ": keep-alive\n\n" if event is None else _sse_frame(event)
    finally:
        state.metrics.streams.dec()
        slot.release()


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
    """Redirect to one generated image's URL, signed now from the record's key (or the public base URL)."""
    record = await current_record(await owned_job(job_id, owner=user, state=state), state=state)
    if record is None or record.type != "succeeded":
        raise BridgeError(
            BridgeCode.CONFLICT, f"the job has no images ({'unfinished' if record is None else record.type})"
        )
    images = {image.index: image for image in record.images}
    if index not in images:
        raise BridgeError(BridgeCode.NOT_FOUND, "no image with that index")
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
    await cancel_job(await owned_job(job_id, owner=user, state=state), owner=user, state=state)
    return CancelAccepted(job_id=job_id)
