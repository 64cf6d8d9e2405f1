"""The original API's routes, so its callers switch without changes: they wait and answer the PNG bytes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from sdqueue.bridge._accounts import Account, AccountError, Throttled, UserExists
from sdqueue.bridge._auth import CurrentUser
from sdqueue.bridge._bodies import form_body, json_body, read_form, read_json
from sdqueue.bridge._errors import error_responses
from sdqueue.bridge._jobs import build_request, submit_job, wait_for_job
from sdqueue.bridge._jobstore import JobRow
from sdqueue.bridge._models import CompatImageForm, SignupBody, SignupDone, TextoBody
from sdqueue.bridge._routes import client_address, submit_with_images
from sdqueue.bridge._state import BridgeState, get_state
from sdqueue.client import new_job_id
from sdqueue.contracts import BridgeCode, ErrorCode
from sdqueue.contracts.errors import BridgeError

State = Annotated[BridgeState, Depends(get_state)]
DEFAULT_IMG2IMG_PROMPT = "A beautiful landscape"
COMPAT_STRENGTH = 0.75
COMPAT_GUIDANCE = 7.5
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
PNG_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "the image"}}


router = APIRouter(tags=["compatibility"])


async def texto_body(request: Request, _: CurrentUser) -> TextoBody:
    """`POST /generar-imagen-texto`'s JSON body, read once the caller is authenticated."""
    return await read_json(request, TextoBody)


async def imagen_body(request: Request, _: CurrentUser, state: State) -> tuple[CompatImageForm, bytes]:
    """`POST /generar-imagen-imagen`'s form (an optional `prompt`) and `imagen` file, read after authentication."""
    fields, images = await read_form(
        request, CompatImageForm, files=("imagen",), max_file_bytes=state.settings.bridge.max_upload_bytes
    )
    return fields, images["imagen"]


@router.post(
    "/generar-imagen-texto",
    response_class=Response,
    responses={**PNG_ANSWER, **error_responses(400, 401, 404, 409, 413, 422, 503, 504)},
    openapi_extra=json_body(TextoBody),
)
async def generar_imagen_texto(
    body: Annotated[TextoBody, Depends(texto_body)], user: CurrentUser, state: State
) -> Response:
    """Original API: JSON `{"texto": ...}`; waits and answers the PNG."""
    job_id = new_job_id()
    generation = build_request({"mode": "txt2img", "prompt": body.texto, **_compat_size(state)}, job_id=job_id)
    return await _png_when_done(await submit_job(generation, owner=user, state=state), owner=user, state=state)


@router.post(
    "/generar-imagen-imagen",
    response_class=Response,
    responses={**PNG_ANSWER, **error_responses(400, 401, 404, 409, 413, 422, 503, 504)},
    openapi_extra=form_body(CompatImageForm, files={"imagen": "init image: PNG, JPEG or WebP"}),
)
async def generar_imagen_imagen(
    body: Annotated[tuple[CompatImageForm, bytes], Depends(imagen_body)],
    user: CurrentUser,
    state: State,
    prompt_query: Annotated[str | None, Query(alias="prompt", min_length=1, max_length=4000)] = None,
) -> Response:
    """Original API: multipart file `imagen`, `prompt` as a query parameter or form field; answers the PNG."""
    form, image = body
    job_id = new_job_id()
    fields = {
        "mode": "img2img",
        "prompt": form.prompt or prompt_query or DEFAULT_IMG2IMG_PROMPT,
        "strength": COMPAT_STRENGTH,
        **_compat_size(state),
    }
    row = await submit_with_images(fields, {"init_image": image}, job_id=job_id, owner=user, state=state)
    return await _png_when_done(row, owner=user, state=state)


@router.post(
    "/registrar_usuario",
    status_code=201,
    response_model=SignupDone,
    responses=error_responses(400, 403, 409),
    openapi_extra=json_body(SignupBody),
)
async def registrar_usuario(request: Request, state: State) -> SignupDone:
    """Original API: create a user from `{"correo", "contraseña"}`, only when sign-up is enabled (throttled)."""
    if not state.settings.bridge.allow_signup:
        raise BridgeError(ErrorCode.FORBIDDEN, "sign-up is disabled on this server")
    body = await read_json(request, SignupBody)
    _check_signup(body, min_length=state.settings.bridge.min_password_length)
    try:
        await state.accounts.add(body.correo, body.contrasena, address=client_address(request))
    except Throttled as exc:
        raise BridgeError(
            BridgeCode.TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc
    except UserExists as exc:
        raise BridgeError(BridgeCode.CONFLICT, "that user already exists") from exc
    except AccountError as exc:
        raise BridgeError(ErrorCode.INVALID_REQUEST, str(exc)) from exc
    return SignupDone(usuario=body.correo)


def _check_signup(body: SignupBody, *, min_length: int) -> None:
    if not re.fullmatch(EMAIL_PATTERN, body.correo):
        raise BridgeError(ErrorCode.INVALID_REQUEST, "correo must be an e-mail address")
    if len(body.contrasena) < min_length:
        raise BridgeError(ErrorCode.INVALID_REQUEST, f"the password needs at least {min_length} characters")


def _compat_size(state: BridgeState) -> dict[str, int | float]:
    bridge = state.settings.bridge
    return {
        "width": bridge.compat_width,
        "height": bridge.compat_height,
        "steps": bridge.compat_steps,
        "guidance_scale": COMPAT_GUIDANCE,
    }


async def _png_when_done(row: JobRow, *, owner: Account, state: BridgeState) -> Response:
    """Wait for a submitted job's record (a wait the owner's stream cap counts) and answer its first image."""
    with state.streams.take(owner.user_id):
        status = await wait_for_job(row, state=state, timeout_s=state.settings.bridge.max_wait_s)
    result = status.result
    if result is None:
        raise BridgeError(BridgeCode.TIMEOUT, f"job {row.job_id} did not finish in time")
    if result.type != "succeeded":
        raise BridgeError(result.error.code, result.error.message)
    data = await state.client.fetch_image(result.images[0])
    return Response(data, media_type="image/png", headers={"X-Job-Id": row.job_id})
