"""Verify the JWT bound to a request message, before any other work touches the job.

Two steps: `authenticate` checks that a key of the token's own issuer signed it for this job id (failing that,
nobody verifiable speaks for the job and nothing is reported); `check_claims` then checks what the verified
caller asked for (time, audience, body, scope, quota), and a failure there is reported to that caller.
`verify_request` runs both once, at intake, and keeps the outcome for fairness and the job path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from pydantic import ValidationError

from sdqueue.config import AuthSettings, IssuerKeys
from sdqueue.contracts import QUOTA_CLAIM, SCOPE_ADMIN, SCOPE_GENERATE, Quota, body_sha256
from sdqueue.contracts.errors import (
    BodyMismatch,
    Forbidden,
    InvalidToken,
    MissingToken,
    SdqueueError,
    TokenExpired,
    UnverifiedToken,
)
from sdqueue.contracts.quota import UNLIMITED
from sdqueue.contracts.tokens import BEARER_PREFIX, REQUIRED_CLAIMS

GENERATE_SCOPES = frozenset({SCOPE_GENERATE, SCOPE_ADMIN})
# The first pass checks the signature only; the claims are checked once the signer is known.
_SIGNATURE_ONLY = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


@dataclass(frozen=True, order=True)
class Caller:
    """Who speaks for a job: a subject is unique only within its issuer, so the two together."""

    issuer: str
    subject: str

    def __str__(self) -> str:
        return f"{self.issuer}/{self.subject}"


@dataclass(frozen=True)
class IssuerKeyset:
    """One issuer's keys: its HMAC secret and its JWKS public keys by `kid`."""

    hmac_secret: bytes | None
    public_keys: Mapping[str, jwt.PyJWK]


@dataclass(frozen=True)
class VerificationKeys:
    """Keys loaded once at start, by issuer: each verifies only its own issuer's tokens."""

    issuers: Mapping[str, IssuerKeyset]


@dataclass(frozen=True)
class VerifiedToken:
    """A token signed by a key of its own issuer for this job id; its other claims are not checked yet."""

    token: str
    algorithm: str
    key: Any
    caller: Caller


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What a verified token says about the caller and the job."""

    subject: str
    issuer: str
    job_id: str
    scopes: frozenset[str]
    expires_at: datetime
    quota: Quota = UNLIMITED

    @property
    def caller(self) -> Caller:
        """The (issuer, subject) pair that owns what this token asks for."""
        return Caller(self.issuer, self.subject)


@dataclass(frozen=True)
class Verification:
    """What a request's token proved, checked once at intake: who signed it, and its claims or why they fail.

    `caller` is None when no trusted key signed the token for this job id (then nothing may be reported).
    """

    caller: Caller | None
    outcome: Claims | SdqueueError

    @property
    def claims(self) -> Claims | None:
        """The claims of a token that verified in full, else None."""
        return self.outcome if isinstance(self.outcome, Claims) else None

    def require_claims(self) -> Claims:
        """The claims of a token that verified in full.

        Raises:
            SdqueueError: why it did not (`Unattributed` when no verified caller speaks for the job).
        """
        if isinstance(self.outcome, SdqueueError):
            raise self.outcome
        return self.outcome


def verify_request(
    authorization: str | None, *, body: bytes, job_id: str, auth: AuthSettings, keys: VerificationKeys
) -> Verification:
    """Authenticate a request's token, then check its claims for generation; never raises."""
    try:
        verified = authenticate(authorization, job_id=job_id, auth=auth, keys=keys)
    except SdqueueError as error:
        return Verification(caller=None, outcome=error)
    try:
        claims = check_claims(verified, body=body, job_id=job_id, auth=auth, required_scopes=GENERATE_SCOPES)
    except SdqueueError as error:
        return Verification(caller=verified.caller, outcome=error)
    return Verification(caller=verified.caller, outcome=claims)


def load_keys(auth: AuthSettings) -> VerificationKeys:
    """Read every accepted issuer's secret and JWKS file; called once at start-up."""
    return VerificationKeys(issuers={issuer: _load_issuer(keys) for issuer, keys in auth.issuer_key_settings().items()})


def _load_issuer(keys: IssuerKeys) -> IssuerKeyset:
    secret = keys.hs256_secret.get_secret_value().encode() if keys.hs256_secret else None
    public_keys: dict[str, jwt.PyJWK] = {}
    if keys.jwks_file is not None:
        jwks = json.loads(Path(keys.jwks_file).read_text(encoding="utf-8"))
        for key in jwt.PyJWKSet.from_dict(jwks).keys:
            if key.key_id:
                public_keys[key.key_id] = key
    return IssuerKeyset(hmac_secret=secret, public_keys=public_keys)


def verify_token(
    authorization: str | None,
    *,
    body: bytes,
    job_id: str,
    auth: AuthSettings,
    keys: VerificationKeys,
    required_scopes: frozenset[str] = GENERATE_SCOPES,
) -> Claims:
    """Authenticate the token, then check its claims; return the claims.

    Raises:
        MissingToken, UnverifiedToken: see `authenticate`.
        InvalidToken, TokenExpired, BodyMismatch, Forbidden: see `check_claims`.
    """
    verified = authenticate(authorization, job_id=job_id, auth=auth, keys=keys)
    return check_claims(verified, body=body, job_id=job_id, auth=auth, required_scopes=required_scopes)


def authenticate(
    authorization: str | None, *, job_id: str, auth: AuthSettings, keys: VerificationKeys
) -> VerifiedToken:
    """Check that a key of the token's own issuer signed it, for this job id, and return who it speaks for.

    Raises:
        MissingToken: no bearer token, or one that is not a JWT.
        UnverifiedToken: disallowed algorithm, unknown issuer or key, bad signature, no subject, or `jti` naming
            another job.
    """
    token = _bearer_token(authorization)
    algorithm, kid, unverified = _unverified_parts(token)
    if algorithm not in auth.algorithms:
        raise UnverifiedToken("token algorithm is not allowed")
    issuer = unverified.get("iss")
    keyset = keys.issuers.get(issuer) if isinstance(issuer, str) else None
    if keyset is None:
        raise UnverifiedToken("token issuer is not accepted")
    key = _key_for(algorithm, kid=kid, keyset=keyset)
    try:
        payload = jwt.decode(token, key, algorithms=[algorithm], options=_SIGNATURE_ONLY)  # type: ignore[arg-type]  # PyJWT's Options TypedDict
    except jwt.InvalidTokenError as exc:
        raise UnverifiedToken(f"token rejected: {_reason(exc)}") from exc
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise UnverifiedToken("token names no subject")
    if payload.get("jti") != job_id:
        raise UnverifiedToken("token was issued for another job id")
    return VerifiedToken(token=token, algorithm=algorithm, key=key, caller=Caller(str(payload["iss"]), subject))


def check_claims(
    verified: VerifiedToken, *, body: bytes, job_id: str, auth: AuthSettings, required_scopes: frozenset[str]
) -> Claims:
    """Check the claims of an authenticated token against this message and return them.

    Raises:
        InvalidToken: a claim does not hold (audience, `nbf`, `iat`, a missing claim, a malformed `quota`).
        TokenExpired: `exp` passed before the job could start.
        BodyMismatch: the token was signed for other body bytes.
        Forbidden: the token has none of `required_scopes`.
    """
    payload = _decode(verified, auth=auth)
    if payload["body_sha256"] != body_sha256(body):
        raise BodyMismatch("token was issued for a different request body")
    scopes = frozenset(str(payload["scope"]).split())
    if not scopes & required_scopes:
        raise Forbidden(f"token lacks scope {' or '.join(sorted(required_scopes))}")
    return Claims(
        subject=verified.caller.subject,
        issuer=verified.caller.issuer,
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
        raise MissingToken("request carries no bearer token")
    return authorization.removeprefix(BEARER_PREFIX).strip()


def _unverified_parts(token: str) -> tuple[object, object, dict[str, Any]]:
    """The header's `alg` and `kid` and the payload, none of them trusted yet."""
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.DecodeError as exc:
        raise MissingToken("authorization is not a JWT") from exc
    return header.get("alg"), header.get("kid"), payload


def _decode(verified: VerifiedToken, *, auth: AuthSettings) -> dict[str, Any]:
    try:
        return jwt.decode(
            verified.token,
            verified.key,
            algorithms=[verified.algorithm],
            audience=auth.audience,
            issuer=verified.caller.issuer,
            leeway=auth.leeway_s,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired("token expired before the job could start") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"token rejected: {_reason(exc)}") from exc


def _key_for(algorithm: str, *, kid: object, keyset: IssuerKeyset) -> Any:
    """Pick the key by algorithm family: HMAC never uses a public key, so algorithm confusion cannot work."""
    if algorithm.startswith("HS"):
        if keyset.hmac_secret is None:
            raise UnverifiedToken("token algorithm is not allowed")
        return keyset.hmac_secret
    jwk = keyset.public_keys.get(kid) if isinstance(kid, str) else None
    if jwk is None:
        raise UnverifiedToken("token key id is unknown")
    if jwk.algorithm_name != algorithm:
        raise UnverifiedToken("token algorithm does not match its key")
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
