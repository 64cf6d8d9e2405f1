"""Building requests, tokens and raw messages for end-to-end tests, good and deliberately bad."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import time
import zlib
from typing import Any

import aio_pika
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sdqueue.client import bearer, new_job_id
from sdqueue.config import AuthSettings
from sdqueue.contracts import SCHEMA_VERSION, SCOPE_GENERATE, GenerationRequest, body_sha256, utc_now
from sdqueue.contracts.topology import AUTHORIZATION_HEADER

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


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
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def message_without_id(body: bytes, *, correlation_id: str, authorization: str | None) -> aio_pika.Message:
    """A request message with no `message_id`, findable in `sdqueue.dead` by its `correlation_id`."""
    message = raw_message(body, job_id=None, authorization=authorization)
    message.correlation_id = correlation_id
    return message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
