"""Request bodies, read only once the caller is authenticated: JSON and multipart forms, with the contract's errors.

Routes declare no body parameters (FastAPI would read and parse the body before any dependency runs); each takes
its body through a dependency that itself depends on the caller, so the body is read after authentication, and
`BodyLimits` has already capped its bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from sdqueue.bridge._errors import describe_problems
from sdqueue.bridge._uploads import read_upload
from sdqueue.contracts import ErrorCode
from sdqueue.contracts.errors import BridgeError

Body = TypeVar("Body", bound=BaseModel)
MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 16 * 1024


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` entry of a route that reads `model` with `read_json`."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def form_body(model: type[BaseModel], *, files: dict[str, str]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a multipart route: `model`'s fields plus binary `files` (name: description)."""
    schema = model.model_json_schema()
    properties = {**schema.get("properties", {})}
    for name, description in files.items():
        properties[name] = {"type": "string", "format": "binary", "description": description}
    schema = {**schema, "properties": properties, "required": [*schema.get("required", []), *files]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def read_json(request: Request, model: type[Body]) -> Body:
    """The request's body as `model`.

    Raises:
        BridgeError: `invalid_request`, naming what is wrong (the body is not JSON, a field is invalid).
    """
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise BridgeError(ErrorCode.INVALID_REQUEST, describe_problems(exc.errors())) from exc


async def read_form(
    request: Request, model: type[Body], *, files: tuple[str, ...], max_file_bytes: int
) -> tuple[Body, dict[str, bytes]]:
    """A multipart body's fields as `model` and each of `files` as bytes (at most `max_file_bytes` each).

    Raises:
        BridgeError: `invalid_request` for a malformed form, a missing file or a bad field; `image_too_large`.
    """
    images: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    try:
        async with request.form(
            max_files=len(files), max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        ) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name in files:
                        images[name] = await read_upload(value, name=name, max_bytes=max_file_bytes)
                elif name not in files:
                    fields[name] = value
    except (MultiPartException, HTTPException) as exc:
        raise BridgeError(ErrorCode.INVALID_REQUEST, "the body is not a valid multipart form") from exc
    missing = [name for name in files if name not in images]
    if missing:
        raise BridgeError(ErrorCode.INVALID_REQUEST, f"the form needs the file field(s) {', '.join(missing)}")
    try:
        return model.model_validate(fields), images
    except ValidationError as exc:
        raise BridgeError(ErrorCode.INVALID_REQUEST, describe_problems(exc.errors())) from exc
