"""Building requests, tokens and raw messages for end-to-end tests, good and deliberately bad."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import struct
import time
import zlib
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader

from sdqueue.client import bearer, new_job_id
from sdqueue.config import AuthSettings
from sdqueue.contracts import SCHEMA_VERSION, SCOPE_GENERATE, GenerationRequest, body_sha256, utc_now
from sdqueue.contracts.topology import AUTHORIZATION_HEADER, REQUESTS_EXCHANGE

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_Frame = TypeVar("_Frame")


def txt2img(**overrides: Any) -> GenerationRequest:
    """A small, fast txt2img request for the tiny model."""
    fields: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "job_id": new_job_id(),
        "mode": "txt2img",
        "prompt": "a dog with a hat",
        "width": 64,
        "height": 64,
        "steps": 2,
        **overrides,
    }
    return GenerationRequest.model_validate(fields)


def claims(body: bytes, *, job_id: str, auth: AuthSettings, **overrides: Any) -> dict[str, Any]:
    """Valid claims for `body`, with any claim replaced (or removed, with value None)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": auth.issuers[0],
        "aud": auth.audience,
        "sub": "tester",
        "iat": now,
        "exp": now + 300,
        "jti": job_id,
        "body_sha256": body_sha256(body),
        "scope": SCOPE_GENERATE,
        **overrides,
    }
    return {name: value for name, value in values.items() if value is not None}


def hs256(payload: dict[str, Any], auth: AuthSettings) -> str:
    """Sign with the stack's shared secret."""
    assert auth.hs256_secret is not None
    return jwt.encode(payload, auth.hs256_secret.get_secret_value(), algorithm="HS256")


def raw_message(body: bytes, *, job_id: str | None, authorization: str | None) -> aio_pika.Message:
    """A request message as any producer could build it, bypassing the client's checks."""
    headers: dict[str, Any] = {AUTHORIZATION_HEADER: authorization} if authorization is not None else {}
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job_id,
        timestamp=utc_now(),
        headers=headers,
    )


def signed_message(body: bytes, *, job_id: str, auth: AuthSettings, **claim_overrides: Any) -> aio_pika.Message:
    """A message whose token is valid except for the claims overridden."""
    token = hs256(claims(body, job_id=job_id, auth=auth, **claim_overrides), auth)
    return raw_message(body, job_id=job_id, authorization=bearer(token))


def unsigned_token(payload: dict[str, Any]) -> str:
    """An `alg: none` token, which must never be accepted."""
    return jwt.encode(payload, key="", algorithm="none")


def img2img(init_image: dict[str, str], **overrides: Any) -> GenerationRequest:
    """A small img2img request with `init_image` as given (`{"key": …}` or `{"data": …}`), checked by the model."""
    return txt2img(mode="img2img", strength=0.6, init_image=init_image, **overrides)


def body_with(request: GenerationRequest, **changes: Any) -> bytes:
    """The request's JSON with fields replaced by values the model would refuse (Python's json writes `NaN`)."""
    return json.dumps({**request.model_dump(mode="json"), **changes}).encode()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims a huge canvas: a decompression bomb as far as any decoder knows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def signed_with(payload: dict[str, Any], key: PrivateKey, *, algorithm: str, kid: str | None) -> str:
    """Sign with an asymmetric private key, naming `kid` in the header (none when None)."""
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid} if kid is not None else None)


def hmac_forged(payload: dict[str, Any], secret: bytes, *, kid: str | None) -> str:
    """An HS256 token keyed with any bytes (a public key, say), built by hand as an attacker would.

    PyJWT refuses to HMAC with PEM or SSH key material, which is exactly what algorithm confusion needs.
    """
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid is not None else {})
    signing_input = _signing_input(header, payload)
    return f"{signing_input}.{_b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def unsigned_with_header(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A token with any header and an empty signature (`alg: NONE` and friends), which PyJWT will not build."""
    return f"{_signing_input(header, payload)}."


def _signing_input(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}"


async def publish_without_message_id(
    amqp_url: str,
    body: bytes,
    *,
    routing_key: str,
    correlation_id: str,
    authorization: str | None,
    timeout_s: float = 10.0,
) -> None:
    """Publish a request with no `message_id` at all to `sdqueue.requests`, and wait for the broker's confirm.

    aiormq gives every message it publishes a random `message_id`, so this speaks AMQP 0-9-1 itself (pamqp frames
    over a socket), as a producer on another client library may.
    """
    url = urlsplit(amqp_url)
    properties = commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        correlation_id=correlation_id,
        headers={AUTHORIZATION_HEADER: authorization} if authorization is not None else None,
    )
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 5672)
    frames = _FrameReader(reader)
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(ProtocolHeader().marshal())
            await frames.expect(commands.Connection.Start)
            login = f"\0{unquote(url.username or 'guest')}\0{unquote(url.password or 'guest')}"
            writer.write(frame.marshal(commands.Connection.StartOk(mechanism="PLAIN", response=login), 0))
            tune = await frames.expect(commands.Connection.Tune)
            writer.write(frame.marshal(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0))
            writer.write(frame.marshal(commands.Connection.Open(virtual_host=unquote(url.path[1:]) or "/"), 0))
            await frames.expect(commands.Connection.OpenOk)
            writer.write(frame.marshal(commands.Channel.Open(), 1))
            await frames.expect(commands.Channel.OpenOk)
            writer.write(frame.marshal(commands.Confirm.Select(), 1))
            await frames.expect(commands.Confirm.SelectOk)
            publish = commands.Basic.Publish(exchange=REQUESTS_EXCHANGE, routing_key=routing_key, mandatory=True)
            writer.write(frame.marshal(publish, 1))
            writer.write(frame.marshal(ContentHeader(body_size=len(body), properties=properties), 1))
            chunk_bytes = tune.frame_max - 8
            for start in range(0, len(body), chunk_bytes):
                writer.write(frame.marshal(ContentBody(body[start : start + chunk_bytes]), 1))
            await frames.expect(commands.Basic.Ack)  # a Basic.Return (unroutable) fails here
            writer.write(
                frame.marshal(commands.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 0)
            )
            await frames.expect(commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()


class _FrameReader:
    """Reads one whole frame at a time and checks it is the reply expected."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def expect(self, kind: type[_Frame]) -> _Frame:
        head = await self._reader.readexactly(7)
        size = struct.unpack(">BHI", head)[2]
        _, _, value = frame.unmarshal(head + await self._reader.readexactly(size + 1))
        assert isinstance(value, kind), f"expected {kind.__name__}, the broker sent {value!r}"
        return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
