"""Building requests, tokens and raw messages for end-to-end tests, good and deliberately bad."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import jwt

from sdqueue.client import bearer, new_job_id
from sdqueue.config import AuthSettings
from sdqueue.contracts import SCHEMA_VERSION, SCOPE_GENERATE, GenerationRequest, body_sha256, utc_now
from sdqueue.contracts.topology import AUTHORIZATION_HEADER


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
