"""Mint the per-message JWT that binds a caller, a job id and the exact body bytes (HS256 shared secret)."""

from __future__ import annotations

import time

import jwt

from sdqueue.config import AuthSettings
from sdqueue.contracts import QUOTA_CLAIM, SCOPE_GENERATE, Quota, body_sha256
from sdqueue.contracts.errors import UsageError
from sdqueue.contracts.tokens import BEARER_PREFIX


def mint_token(
    body: bytes,
    *,
    job_id: str,
    subject: str,
    auth: AuthSettings,
    scopes: tuple[str, ...] = (SCOPE_GENERATE,),
    ttl_s: float | None = None,
    now: float | None = None,
    quota: Quota | None = None,
) -> str:
    """Sign a token for one request body with the configured HS256 secret.

    `exp` is the latest moment the job may start; `ttl_s` defaults to `auth.token_ttl_s`. A `quota` narrows the
    worker's caps for this caller and sets its priority.

    Raises:
        UsageError: no HS256 secret is configured (asymmetric keys are signed by the caller's own issuer).
    """
    if auth.hs256_secret is None:
        raise UsageError("set SDQUEUE_AUTH__HS256_SECRET to mint tokens, or pass a token signed by your issuer")
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": auth.issuers[0],
        "aud": auth.audience,
        "sub": subject,
        # No `nbf`: a worker whose clock runs behind would refuse a token that is already valid.
        "iat": issued_at,
        "exp": issued_at + int(auth.token_ttl_s if ttl_s is None else ttl_s),
        "jti": job_id,
        "body_sha256": body_sha256(body),
        "scope": " ".join(scopes),
    }
    if quota is not None and (claim := quota.claim()):
        claims[QUOTA_CLAIM] = claim
    return jwt.encode(claims, auth.hs256_secret.get_secret_value(), algorithm="HS256")


def bearer(token: str) -> str:
    """The `authorization` header value for a token."""
    return f"{BEARER_PREFIX}{token}"
