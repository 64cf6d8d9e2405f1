"""The original API's routes, so its callers switch without changes: they wait and answer the PNG bytes."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from sdqueue.bridge._auth import CurrentUser
from sdqueue.bridge._bodies import json_body, read_json
from sdqueue.bridge._errors import CONFLICT, TIMEOUT, BridgeError, error_responses
from sdqueue.bridge._jobs import build_request, submit_job, wait_for_job
from sdqueue.bridge._markers import JobMarker, new_bridge_job_id
from sdqueue.bridge._models import SignupBody, SignupDone, TextoBody
from sdqueue.bridge._routes import upload_init
from sdqueue.bridge._state import BridgeState, get_state
from sdqueue.bridge._users import UserExists, UserStoreError
from sdqueue.contracts import ErrorCode, GenerationRequest

State = Annotated[BridgeState, Depends(get_state)]
DEFAULT_IMG2IMG_PROMPT = "A beautiful landscape"
COMPAT_STRENGTH = 0.75
COMPAT_GUIDANCE = 7.5
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
PNG_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "the image"}}


router = APIRouter(tags=["compatibility"])


@router.post(
    "/generar-imagen-texto",
    response_class=Response,
    responses={**PNG_ANSWER, **error_responses(400, 401, 404, 409, 422, 503, 504)},
    openapi_extra=json_body(TextoBody),
)
async def generar_imagen_texto(request: Request, user: CurrentUser, state: State) -> Response:
    """Original API: JSON `{"texto": ...}`; waits and answers the PNG."""
    body = await read_json(request, TextoBody)
    job_id = new_bridge_job_id()
    generation = build_request({"mode": "txt2img", "prompt": body.texto, **_compat_size(state)}, job_id=job_id)
    return await _generate_png(generation, owner=user, state=state)


@router.post(
    "/generar-imagen-imagen",
    response_class=Response,
    responses={**PNG_ANSWER, **error_responses(400, 401, 404, 409, 413, 422, 503, 504)},
)
async def generar_imagen_imagen(
    imagen: Annotated[UploadFile, File(description="init image: PNG, JPEG or WebP")],
    user: CurrentUser,
    state: State,
    prompt_query: Annotated[str | None, Query(alias="prompt", min_length=1, max_length=4000)] = None,
    prompt_form: Annotated[str | None, Form(alias="prompt", min_length=1, max_length=4000)] = None,
) -> Response:
    """Original API: multipart file `imagen`, `prompt` as a query parameter or form field; answers the PNG."""
    job_id = new_bridge_job_id()
    init = await upload_init(imagen, job_id=job_id, state=state)
    fields = {
        "mode": "img2img",
        "prompt": prompt_form or prompt_query or DEFAULT_IMG2IMG_PROMPT,
        "strength": COMPAT_STRENGTH,
        "init_image": init,
        **_compat_size(state),
    }
    return await _generate_png(build_request(fields, job_id=job_id), owner=user, state=state)


@router.post(
    "/registrar_usuario",
    status_code=201,
    response_model=SignupDone,
    responses=error_responses(400, 403, 409),
    openapi_extra=json_body(SignupBody),
)
async def registrar_usuario(request: Request, state: State) -> SignupDone:
    """Original API: create a user from `{"correo", "contraseña"}`, only when sign-up is enabled."""
    if not state.settings.bridge.allow_signup:
        raise BridgeError(ErrorCode.FORBIDDEN, "sign-up is disabled on this server")
    body = await read_json(request, SignupBody)
    _check_signup(body, min_length=state.settings.bridge.min_password_length)
    try:
        await asyncio.to_thread(state.users.add, body.correo, body.contrasena)
    except UserExists as exc:
        raise BridgeError(CONFLICT, "that user already exists") from exc
    except UserStoreError as exc:
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


async def _generate_png(request: GenerationRequest, *, owner: str, state: BridgeState) -> Response:
    marker: JobMarker = await submit_job(request, owner=owner, state=state)
    status = await wait_for_job(marker, state=state, timeout_s=state.settings.bridge.max_wait_s)
    result = status.result
    if result is None:
        raise BridgeError(TIMEOUT, f"job {request.job_id} did not finish in time")
    if result.type != "succeeded":
        raise BridgeError(result.error.code, result.error.message)
    data = await state.client.fetch_image(result.images[0])
    return Response(data, media_type="image/png", headers={"X-Job-Id": request.job_id})
