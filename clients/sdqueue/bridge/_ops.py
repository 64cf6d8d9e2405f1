"""Liveness, readiness and Prometheus metrics, plus the middleware that counts requests."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdqueue import storage
from sdqueue.bridge._errors import ErrorBody, error_response
from sdqueue.bridge._models import Health
from sdqueue.bridge._state import BridgeState, Metrics, get_state
from sdqueue.contracts import BridgeCode
from sdqueue.contracts.errors import StorageError

State = Annotated[BridgeState, Depends(get_state)]
router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody, "description": "not ready"}})
async def readyz(state: State) -> Health | Response:
    """Readiness: the broker subscription is up and the bucket answers."""
    checks = {
        "broker": state.hub.is_connected,
        "storage": await _storage_ready(state),
        "database": await _database_ready(state),
    }
    if not all(checks.values()):
        down = ", ".join(name for name, is_up in checks.items() if not is_up)
        return error_response(BridgeCode.UNAVAILABLE, f"not ready: {down} unreachable")
    return Health(status="ok", checks=checks)


async def _database_ready(state: BridgeState) -> bool:
    try:
        async with asyncio.timeout(state.settings.bridge.readiness_timeout_s), state.database.engine.connect() as db:
            await db.execute(text("SELECT 1"))
    except (TimeoutError, SQLAlchemyError, OSError):
        return False
    return True


async def _storage_ready(state: BridgeState) -> bool:
    try:
        async with asyncio.timeout(state.settings.bridge.readiness_timeout_s):
            await storage.check_bucket(state.s3, bucket=state.settings.s3.bucket)
    except (TimeoutError, StorageError):
        return False
    return True


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def metrics(state: State) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware that counts answers and times them to their headers, by route template (never raw path).

    Plain ASGI rather than `@app.middleware("http")`, which costs a task and a stream per request.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                method = scope["method"]
                self._metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - started)
                self._metrics.requests.labels(method=method, route=route, status=str(message["status"])).inc()
            await send(message)

        await self._app(scope, receive, send_counted)
