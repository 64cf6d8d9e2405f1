"""Liveness, readiness and metrics over plain HTTP, so an orchestrator can tell a stuck worker from a blocked one.

`/healthz` answers while the event loop runs; `/readyz` answers 200 only while the broker connection is up and
the last storage probe succeeded; `/metrics` is the Prometheus text of `WorkerMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdqueue import storage
from sdqueue.contracts.errors import StorageError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

STORAGE_PROBE_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 5.0
JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Readiness:
    """What the worker depends on, as last seen."""

    is_broker_up: Callable[[], bool]
    is_storage_up: bool = False

    def snapshot(self) -> dict[str, bool]:
        """Each dependency's state."""
        return {"broker": self.is_broker_up(), "storage": self.is_storage_up}

    @property
    def is_ready(self) -> bool:
        """True when every dependency is up."""
        return all(self.snapshot().values())


async def probe_storage(readiness: Readiness, *, client: S3Client, bucket: str) -> None:
    """Refresh `readiness.is_storage_up` every few seconds until cancelled."""
    while True:
        try:
            await storage.check_bucket(client, bucket=bucket)
        except StorageError as exc:
            if readiness.is_storage_up:
                log.warning("storage is unavailable: %s", exc.message)
            readiness.is_storage_up = False
        else:
            if not readiness.is_storage_up:
                log.info("storage is available")
            readiness.is_storage_up = True
        await asyncio.sleep(STORAGE_PROBE_INTERVAL_S)


@contextlib.asynccontextmanager
async def serve_health(
    readiness: Readiness, *, metrics: Callable[[], bytes], host: str, port: int
) -> AsyncIterator[int]:
    """Serve `/healthz`, `/readyz` and `/metrics` while the context is open; yields the bound port."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request_line = await reader.readline()
            writer.write(_respond(request_line, readiness, metrics))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("health request dropped: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, host, port)
    bound_port = int(server.sockets[0].getsockname()[1])
    log.info("health endpoint on http://%s:%d/readyz", host, bound_port)
    async with server:
        yield bound_port


def _respond(request_line: bytes, readiness: Readiness, metrics: Callable[[], bytes]) -> bytes:
    parts = request_line.decode("latin-1").split()
    path = parts[1] if len(parts) >= 2 else ""
    if path == "/healthz":
        return _http_response(200, json.dumps({"status": "alive"}).encode(), content_type=JSON)
    if path == "/readyz":
        ready = readiness.is_ready
        body = json.dumps({"ready": ready, **readiness.snapshot()}).encode()
        return _http_response(200 if ready else 503, body, content_type=JSON)
    if path == "/metrics":
        return _http_response(200, metrics(), content_type=PROMETHEUS_TEXT)
    return _http_response(404, json.dumps({"error": "not found"}).encode(), content_type=JSON)


def _http_response(status: int, payload: bytes, *, content_type: str) -> bytes:
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    head = (
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload
