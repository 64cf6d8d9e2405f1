"""ASGI middleware at the edge: byte caps on request bodies while they stream in, and security headers."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdqueue.bridge._errors import error_response
from sdqueue.config import BridgeSettings, LimitSettings, S3Settings
from sdqueue.contracts import BridgeCode, ErrorCode

# Routes whose bodies carry image files, and how many: their cap is that many images plus the form's other fields.
UPLOAD_FILES: Mapping[str, int] = {"/v1/img2img": 1, "/v1/inpaint": 2, "/generar-imagen-imagen": 1}
FORM_FIELDS_BYTES = 64 * 1024
DOCS_PATHS = ("/docs", "/redoc")  # FastAPI's documentation pages load their script from a CDN, inline


class BodyTooLarge(Exception):
    """A request body went past its route's cap while it was being received."""


class BodyLimits:
    """Refuse a body over its route's cap with `413` before the app reads it, or as soon as the stream passes it.

    A declared `Content-Length` over the cap is refused before a byte is read; a chunked or lying body is counted
    as it streams and cut at the cap, so nothing over the cap is ever parsed or spooled.
    """

    def __init__(self, app: ASGIApp, *, bridge: BridgeSettings, limits: LimitSettings) -> None:
        self._app = app
        self._json_cap = bridge.max_body_bytes
        self._image_cap = min(bridge.max_upload_bytes, limits.max_init_image_bytes)

    def cap_for(self, path: str) -> int:
        """The byte cap of a route's body."""
        files = UPLOAD_FILES.get(path, 0)
        return self._json_cap if files == 0 else files * self._image_cap + FORM_FIELDS_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        cap = self.cap_for(scope["path"])
        if _declared_length(scope) > cap:
            await _too_large(scope, cap)(scope, receive, send)
            return
        await self._capped(scope, receive, send, cap=cap)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, *, cap: int) -> None:
        received = 0
        overflowed = False
        started = False

        async def receive_capped() -> Message:
            nonlocal received, overflowed
            message = await receive()
            received += len(message.get("body", b""))
            if received > cap:
                overflowed = True
                raise BodyTooLarge
            return message

        async def send_unless_overflowed(message: Message) -> None:
            nonlocal started
            if overflowed:
                return  # the app's answer to a cut body (a parse error) is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self._app(scope, receive_capped, send_unless_overflowed)
        if overflowed and not started:
            await _too_large(scope, cap)(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _too_large(scope: Scope, cap: int) -> ASGIApp:
    code = ErrorCode.IMAGE_TOO_LARGE if scope["path"] in UPLOAD_FILES else BridgeCode.REQUEST_TOO_LARGE
    response = error_response(code, f"the request body is larger than {cap} bytes")
    response.headers["Connection"] = "close"  # the rest of the body is never read
    return response


class SecurityHeaders:
    """Add a Content-Security-Policy (no inline script), `nosniff`, no referrer and frame denial to every answer."""

    def __init__(self, app: ASGIApp, *, s3: S3Settings) -> None:
        self._app = app
        self._headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        self._csp = (b"content-security-policy", content_security_policy(s3).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = [*self._headers]
        if not scope["path"].startswith(DOCS_PATHS):
            headers.append(self._csp)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self._app(scope, receive, send_with_headers)


def content_security_policy(s3: S3Settings) -> str:
    """The page's policy: its own script, styles and API; images also from the bucket's origin."""
    images = " ".join(["'self'", "data:", "blob:", _bucket_origin(s3)])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {images}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def _bucket_origin(s3: S3Settings) -> str:
    """The origin image URLs point at: the public base URL's, the endpoint's, or any HTTPS origin (AWS)."""
    url = s3.public_base_url or s3.endpoint_url
    if not url:
        return "https:"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
