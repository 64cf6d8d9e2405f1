"""Bridge access tokens: HS256 JWTs signed with `bridge.token_secret`, `sub` = the user name."""

from __future__ import annotations

import time
from typing import Annotated

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

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)


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


def read_access_token(token: str, *, bridge: BridgeSettings) -> str:
    """Return the user name an access token carries.

    Raises:
        BridgeError: `token_expired`, or `invalid_token` for any other flaw.
    """
    try:
        claims = jwt.decode(
            token,
            _secret(bridge),
            algorithms=[ALGORITHM],
            audience=ACCESS_AUDIENCE,
            issuer=ACCESS_ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise BridgeError(ErrorCode.TOKEN_EXPIRED, "the access token has expired", headers=CHALLENGE) from exc
    except jwt.InvalidTokenError as exc:
        raise BridgeError(ErrorCode.INVALID_TOKEN, "the access token was rejected", headers=CHALLENGE) from exc
    return str(claims["sub"])


def _secret(bridge: BridgeSettings) -> str:
    if bridge.token_secret is None:
        raise BridgeError("unavailable", "the bridge has no token secret configured")
    return bridge.token_secret.get_secret_value()


def current_user(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> str:
    """The authenticated caller's user name (FastAPI dependency).

    Raises:
        BridgeError: `unauthenticated` without a bearer token, or the token's own error.
    """
    if not token:
        raise BridgeError(ErrorCode.UNAUTHENTICATED, "a bearer token is required", headers=CHALLENGE)
    bridge: BridgeSettings = request.app.state.bridge.settings.bridge
    return read_access_token(token, bridge=bridge)


CurrentUser = Annotated[str, Depends(current_user)]
