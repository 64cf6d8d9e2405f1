"""Verify the JWT bound to a request message, before any other work touches the job."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from pydantic import ValidationError

from sdqueue.config import AuthSettings
from sdqueue.contracts import QUOTA_CLAIM, SCOPE_ADMIN, SCOPE_GENERATE, Quota, body_sha256
from sdqueue.contracts.quota import UNLIMITED
from sdqueue.contracts.tokens import BEARER_PREFIX, REQUIRED_CLAIMS
from sdqueue.worker.errors import BodyMismatch, Forbidden, InvalidToken, TokenExpired, Unauthenticated


@dataclass(frozen=True)
class VerificationKeys:
    """Keys loaded once at start: the shared HMAC secret and the JWKS public keys by `kid`."""

    hmac_secret: bytes | None
    public_keys: Mapping[str, jwt.PyJWK]


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What a verified token says about the caller and the job."""

    subject: str
    issuer: str
    job_id: str
    scopes: frozenset[str]
    expires_at: datetime
    quota: Quota = UNLIMITED


def load_keys(auth: AuthSettings) -> VerificationKeys:
    """Read the configured secret and JWKS file; called once at start-up."""
    secret = auth.hs256_secret.get_secret_value().encode() if auth.hs256_secret else None
    public_keys: dict[str, jwt.PyJWK] = {}
    if auth.jwks_file is not None:
        jwks = json.loads(Path(auth.jwks_file).read_text(encoding="utf-8"))
        for key in jwt.PyJWKSet.from_dict(jwks).keys:
            if key.key_id:
                public_keys[key.key_id] = key
    return VerificationKeys(hmac_secret=secret, public_keys=public_keys)


def verify_token(
    authorization: str | None,
    *,
    body: bytes,
    job_id: str,
    auth: AuthSettings,
    keys: VerificationKeys,
    required_scopes: frozenset[str] = frozenset({SCOPE_GENERATE, SCOPE_ADMIN}),
) -> Claims:
    """Check signature, claims, job binding, body binding and scope, and return the claims.

    Raises:
        Unauthenticated: no bearer token, or one that is not a JWT.
        InvalidToken: bad signature, disallowed algorithm, unknown key, or a claim that does not hold
            (a malformed `quota` included).
        TokenExpired: `exp` passed before the job could start.
        BodyMismatch: the token was signed for other body bytes.
        Forbidden: the token has none of `required_scopes` (by default generate or admin).
    """
    token = _bearer_token(authorization)
    payload = _decode(token, auth=auth, keys=keys)
    if payload["jti"] != job_id:
        raise InvalidToken("token jti does not match the job id")
    if payload["body_sha256"] != body_sha256(body):
        raise BodyMismatch("token was issued for a different request body")
    scopes = frozenset(str(payload["scope"]).split())
    if not scopes & required_scopes:
        raise Forbidden(f"token lacks scope {' or '.join(sorted(required_scopes))}")
    return Claims(
        subject=str(payload["sub"]),
        issuer=str(payload["iss"]),
        job_id=job_id,
        scopes=scopes,
        expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        quota=_quota(payload.get(QUOTA_CLAIM)),
    )


def _quota(claim: object) -> Quota:
    if claim is None:
        return UNLIMITED
    try:
        return Quota.model_validate(claim)
    except ValidationError as exc:
        raise InvalidToken("token quota claim is malformed") from exc


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.startswith(BEARER_PREFIX):
        raise Unauthenticated("request carries no bearer token")
    return authorization.removeprefix(BEARER_PREFIX).strip()


def _decode(token: str, *, auth: AuthSettings, keys: VerificationKeys) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise Unauthenticated("authorization is not a JWT") from exc
    algorithm = header.get("alg")
    if algorithm not in auth.algorithms:
        raise InvalidToken("token algorithm is not allowed")
    key = _key_for(algorithm, kid=header.get("kid"), keys=keys)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=auth.audience,
            issuer=list(auth.issuers),
            leeway=auth.leeway_s,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired("token expired before the job could start") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"token rejected: {_reason(exc)}") from exc


def _key_for(algorithm: str, *, kid: object, keys: VerificationKeys) -> Any:
    """Pick the key by algorithm family: HMAC never uses a public key, so algorithm confusion cannot work."""
    if algorithm.startswith("HS"):
        if keys.hmac_secret is None:
            raise InvalidToken("token algorithm is not allowed")
        return keys.hmac_secret
    jwk = keys.public_keys.get(kid) if isinstance(kid, str) else None
    if jwk is None:
        raise InvalidToken("token key id is unknown")
    if jwk.algorithm_name != algorithm:
        raise InvalidToken("token algorithm does not match its key")
    return jwk.key


def _reason(exc: jwt.InvalidTokenError) -> str:
    """Name the failed check without echoing token contents."""
    reasons: list[tuple[type[jwt.InvalidTokenError], str]] = [
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidIssuerError, "issuer not accepted"),
        (jwt.ImmatureSignatureError, "not valid yet"),
        (jwt.MissingRequiredClaimError, "a required claim is missing"),
        (jwt.InvalidIssuedAtError, "bad iat"),
        (jwt.DecodeError, "malformed token"),
    ]
    return next((text for cls, text in reasons if isinstance(exc, cls)), "claims do not hold")
