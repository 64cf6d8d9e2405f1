"""A real HTTP/1.1 webhook receiver on loopback: records every POST and answers a scripted status per request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
CONTRACT_DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ReceivedWebhook:
    """One request as it arrived on the socket."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    status: int
    at_monotonic: float

    def header(self, name: str) -> str:
        """A header by case-insensitive name."""
        lowered = {key.lower(): value for key, value in self.headers.items()}
        return lowered[name.lower()]


@dataclass
class WebhookReceiver:
    """Listens on 127.0.0.1:`port` once started; answers `statuses` in turn, then 200 to everything."""

    port: int
    statuses: list[int] = field(default_factory=list)
    received: list[ReceivedWebhook] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        """Start listening (a receiver that is not started refuses connections: it is down)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def url(self, path: str = "/hooks/sdqueue") -> str:
        """A callback URL on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[ReceivedWebhook]:
        """The requests answered with a 2xx."""
        return [item for item in self.received if 200 <= item.status < 300]

    async def wait_for(self, count: int, *, timeout_s: float, accepted_only: bool = True) -> list[ReceivedWebhook]:
        """Wait until `count` requests (2xx-answered ones by default) arrived; returns them (fewer on timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self.accepted() if accepted_only else self.received) < count:
                    self.changed.clear()
                    await self.changed.wait()
        return self.accepted() if accepted_only else list(self.received)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            headers = await _read_headers(reader)
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(min(length, MAX_BODY_BYTES))
            status = self.statuses.pop(0) if self.statuses else 200
            method, target, _ = request_line.split(" ", 2)
            self.received.append(ReceivedWebhook(method, target, headers, body, status, time.monotonic()))
            self.changed.set()
            reason = REASONS.get(status, "Status")
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode("latin-1").rstrip("\r\n")) != "":
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers


@contextlib.asynccontextmanager
async def receiving(port: int, *, statuses: Iterable[int] = ()) -> AsyncIterator[WebhookReceiver]:
    """A started receiver for the block."""
    receiver = WebhookReceiver(port=port, statuses=list(statuses))
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def documented_verify() -> Callable[[bytes, dict[str, str], str], bool]:
    """The `verify` function of the recipe in docs/contract.md's "Webhooks" section, run exactly as written there."""
    text = CONTRACT_DOC.read_text(encoding="utf-8")
    section = text[text.index("## Webhooks") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```\n", start)]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102  # our own documentation, to prove the recipe works as printed
    verify: Callable[[bytes, dict[str, str], str], bool] = namespace["verify"]
    return verify
