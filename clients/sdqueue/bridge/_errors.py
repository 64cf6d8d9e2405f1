"""The bridge's one error type and the one table that maps contract error codes to HTTP statuses."""

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
from sdqueue.client import ClientError, StorageUnavailable, UnroutableRequest
from sdqueue.contracts import ErrorCode

log = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
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
}
# Statuses the bridge answers that no contract code names: an unknown job or route, a conflict, a timeout, a body
# over its cap, a caller over its rate or its open streams.
NOT_FOUND = "not_found"
CONFLICT = "conflict"
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"
METHOD_NOT_ALLOWED = "method_not_allowed"
TOO_LARGE = "request_too_large"
TOO_MANY_REQUESTS = "too_many_requests"
EXTRA_STATUS: dict[str, int] = {
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    CONFLICT: 409,
    TOO_LARGE: 413,
    TOO_MANY_REQUESTS: 429,
    TIMEOUT: 504,
    UNAVAILABLE: 503,
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


class BridgeError(Exception):
    """An error answer; `code` is a contract `ErrorCode` or one of the bridge's own (`not_found`, ...)."""

    def __init__(self, code: ErrorCode | str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.headers = headers

    @property
    def status(self) -> int:
        """The HTTP status of this error, from the one table."""
        return http_status(self.code)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for a route's error answers."""
    return {status: {"model": ErrorBody, "description": "error"} for status in statuses}


def http_status(code: str) -> int:
    """The HTTP status for a contract code or a bridge code."""
    if code in EXTRA_STATUS:
        return EXTRA_STATUS[code]
    return HTTP_STATUS[ErrorCode(code)]


def error_response(code: str, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer with its status from the table."""
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=http_status(code), headers=headers)


def from_client_error(exc: ClientError) -> BridgeError:
    """Translate what the sdqueue client raised into an error answer."""
    if isinstance(exc, UnroutableRequest):
        return BridgeError(ErrorCode.UNKNOWN_MODEL, f"no worker serves model {exc.model!r}")
    if isinstance(exc, StorageUnavailable):
        return BridgeError(ErrorCode.STORAGE_ERROR, "the bucket is unreachable")
    # RequestRefused, BrokerUnavailable and anything else the client raises: the queue is at fault, not the caller.
    return BridgeError(UNAVAILABLE, "the queue is unavailable; try again later")


async def _on_bridge_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)  # noqa: S101  # registered for BridgeError only
    return error_response(exc.code, exc.message, headers=exc.headers)


async def _on_client_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientError)  # noqa: S101  # registered for ClientError only
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return await _on_bridge_error(request, from_client_error(exc))


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail if isinstance(exc, DatabaseUnavailable) else str(exc)
    log.warning("%s %s: the database failed: %s", request.method, request.url.path, detail)
    return error_response(UNAVAILABLE, "the bridge's database is unavailable; try again later")


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101  # registered for RequestValidationError only
    return error_response(ErrorCode.INVALID_REQUEST, describe_problems(exc.errors()))


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101  # registered for HTTPException only
    codes = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 401: ErrorCode.UNAUTHENTICATED}
    code = codes.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    return error_response(str(code), str(exc.detail), headers=getattr(exc, "headers", None))


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
    ClientError: _on_client_error,
    DBAPIError: _on_database_error,
    DatabaseUnavailable: _on_database_error,
    RequestValidationError: _on_validation_error,
    StarletteHTTPException: _on_http_error,
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as `{"error": {"code", "message"}}`."""
    for exc_type, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
