"""Bridge access tokens: HS256 JWTs signed with `bridge.token_secret`, `sub` = the user name."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from sdqueue.bridge._errors import BridgeError
from sdqueue.config import BridgeSettings
from sdqueue.contracts import ErrorCode

ACCESS_AUDIENCE = "sdqueue-bridge"
ACCESS_ISSUER = "sdqueue-bridge"
ALGORITHM = "HS256"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
VERIFIED_TOKENS_KEPT = 4096

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)
# The OpenAPI `security` entry of a route that authenticates with `request_user` instead of the dependency.
BEARER_SECURITY: dict[str, Any] = {"security": [{oauth2_scheme.scheme_name: []}]}


def issue_access_token(username: str, *, bridge: BridgeSettings, now: float | None = None) -> str:
    """Sign an access token for a user, valid for `bridge.access_token_ttl_s`.

    Raises:
        BridgeError: no token secret is configured.
    """
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": ACCESS_ISSUER,
        "aud": ACCESS_AUDIENCE,
        "sub": username,
        "iat": issued_at,
        "exp": issued_at + bridge.access_token_ttl_s,
    }
    return jwt.encode(claims, _secret(bridge), algorithm=ALGORITHM)


def read_access_token(token: str, *, bridge: BridgeSettings, now: float | None = None) -> str:
    """Return the user name an access token carries.

    Raises:
        BridgeError: `token_expired`, or `invalid_token` for any other flaw.
    """
    return _verify(token, bridge=bridge).user_at(time.time() if now is None else now)


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says: whose it is and until when."""

    user: str
    expires_at: int

    def user_at(self, now: float) -> str:
        """The token's user, if the token has not expired by `now`.

        Raises:
            BridgeError: `token_expired`.
        """
        if now >= self.expires_at:
            raise BridgeError(ErrorCode.TOKEN_EXPIRED, "the access token has expired", headers=CHALLENGE)
        return self.user


class AccessTokens:
    """Checks bridge access tokens, verifying each distinct token's signature once.

    A caller sends the same token with every request; after the first, checking it costs a lookup and an expiry
    comparison instead of a JWT decode. Only tokens that verified are kept, at most `max_entries`, oldest out first.
    """

    def __init__(self, bridge: BridgeSettings, *, max_entries: int = VERIFIED_TOKENS_KEPT) -> None:
        self._bridge = bridge
        self._max_entries = max_entries
        self._verified: dict[str, AccessClaims] = {}

    def user_of(self, token: str, *, now: float | None = None) -> str:
        """Return the user name a valid access token carries.

        Raises:
            BridgeError: `token_expired`, or `invalid_token` for any other flaw.
        """
        now = time.time() if now is None else now
        claims = self._verified.get(token)
        if claims is not None:
            return claims.user_at(now)
        claims = _verify(token, bridge=self._bridge)
        user = claims.user_at(now)
        if len(self._verified) >= self._max_entries:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return user

    def __len__(self) -> int:
        """How many verified tokens are kept."""
        return len(self._verified)


def _verify(token: str, *, bridge: BridgeSettings) -> AccessClaims:
    """Check an access token's signature, audience, issuer and claims; expiry is left to `AccessClaims.user_at`."""
    try:
        claims = jwt.decode(
            token,
            _secret(bridge),
            algorithms=[ALGORITHM],
            audience=ACCESS_AUDIENCE,
            issuer=ACCESS_ISSUER,
            options={"require": ["exp", "iat", "sub"], "verify_exp": False},
        )
    except jwt.InvalidTokenError as exc:
        raise _rejected() from exc
    user, expires_at = claims["sub"], claims["exp"]
    if isinstance(user, str) and isinstance(expires_at, int):
        return AccessClaims(user=user, expires_at=expires_at)
    raise _rejected()


def _rejected() -> BridgeError:
    return BridgeError(ErrorCode.INVALID_TOKEN, "the access token was rejected", headers=CHALLENGE)


def _secret(bridge: BridgeSettings) -> str:
    if bridge.token_secret is None:
        raise BridgeError("unavailable", "the bridge has no token secret configured")
    return bridge.token_secret.get_secret_value()


async def current_user(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> str:
    """The authenticated caller's user name (FastAPI dependency).

    Raises:
        BridgeError: `unauthenticated` without a bearer token, or the token's own error.
    """
    return _user_of(request, token)


def request_user(request: Request) -> str:
    """The authenticated caller's user name, read from the `Authorization` header without a dependency.

    For `POST /v1/txt2img`, the bridge's hot path; its OpenAPI entry names the scheme through `BEARER_SECURITY`.

    Raises:
        BridgeError: `unauthenticated` without a bearer token, or the token's own error.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return _user_of(request, token if scheme.lower() == "bearer" else None)


def _user_of(request: Request, token: str | None) -> str:
    if not token:
        raise BridgeError(ErrorCode.UNAUTHENTICATED, "a bearer token is required", headers=CHALLENGE)
    tokens: AccessTokens = request.app.state.bridge.tokens
    return tokens.user_of(token)


CurrentUser = Annotated[str, Depends(current_user)]
