"""The one table that maps error codes (the contract's and the bridge's own) to HTTP statuses, and the handlers
that answer every error as `{"error": {"code", "message"}}`. `BridgeError` itself lives in the one error tree."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdqueue.bridge._db import DatabaseUnavailable
from sdqueue.contracts import BridgeCode, ErrorCode
from sdqueue.contracts.errors import BridgeError, SdqueueError, StorageError, UnroutableRequest

log = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode | BridgeCode, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.BODY_MISMATCH: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.LIMITS_EXCEEDED: 422,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.GENERATION_FAILED: 500,
    ErrorCode.STORAGE_ERROR: 503,
    ErrorCode.CANCELLED: 409,
    ErrorCode.DELIVERY_LIMIT_EXCEEDED: 500,
    BridgeCode.NOT_FOUND: 404,
    BridgeCode.METHOD_NOT_ALLOWED: 405,
    BridgeCode.CONFLICT: 409,
    BridgeCode.REQUEST_TOO_LARGE: 413,
    BridgeCode.TOO_MANY_REQUESTS: 429,
    BridgeCode.TIMEOUT: 504,
    BridgeCode.UNAVAILABLE: 503,
}


class ErrorDetail(BaseModel):
    """What went wrong, safe to show the caller."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message"}}`."""

    model_config = ConfigDict(frozen=True)

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for a route's error answers."""
    return {status: {"model": ErrorBody, "description": "error"} for status in statuses}


def error_response(
    code: ErrorCode | BridgeCode, message: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error answer with its status from the table."""
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=HTTP_STATUS[code], headers=headers)


def from_client_error(exc: SdqueueError) -> BridgeError:
    """Translate what the sdqueue client (or the bucket under it) raised into an error answer."""
    if isinstance(exc, UnroutableRequest):
        return BridgeError(ErrorCode.UNKNOWN_MODEL, f"no worker serves model {exc.model!r}")
    if isinstance(exc, StorageError):
        return BridgeError(ErrorCode.STORAGE_ERROR, "the bucket is unreachable")
    # RequestRefused, BrokerUnavailable and anything else the client raises: the queue is at fault, not the caller.
    return BridgeError(BridgeCode.UNAVAILABLE, "the queue is unavailable; try again later")


async def _on_bridge_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)  # noqa: S101  # registered for BridgeError only
    return error_response(exc.code, exc.message, headers=exc.headers)


async def _on_client_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SdqueueError)  # noqa: S101  # registered for SdqueueError only
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return await _on_bridge_error(request, from_client_error(exc))


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail if isinstance(exc, DatabaseUnavailable) else str(exc)
    log.warning("%s %s: the database failed: %s", request.method, request.url.path, detail)
    return error_response(BridgeCode.UNAVAILABLE, "the bridge's database is unavailable; try again later")


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for RequestValidationError only
    return error_response(ErrorCode.INVALID_REQUEST, describe_problems(exc.errors()))


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for HTTPException only
    codes: dict[int, ErrorCode | BridgeCode] = {
        404: BridgeCode.NOT_FOUND,
        405: BridgeCode.METHOD_NOT_ALLOWED,
        401: ErrorCode.UNAUTHENTICATED,
    }
    code = codes.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    return error_response(code, str(exc.detail), headers=getattr(exc, "headers", None))


def describe_problems(errors: Sequence[Any]) -> str:
    """The first few validation problems (pydantic's or FastAPI's error dicts) in one line for the caller."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


ErrorHandler = Callable[[Request, Exception], Awaitable[JSONResponse]]
ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    BridgeError: _on_bridge_error,
    SdqueueError: _on_client_error,
    DBAPIError: _on_database_error,
    DatabaseUnavailable: _on_database_error,
    RequestValidationError: _on_validation_error,
    StarletteHTTPException: _on_http_error,
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as `{"error": {"code", "message"}}`."""
    for exc_type, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
