"""Bridge access tokens: HS256 JWTs signed with `bridge.token_secret` for one account and its token generation.

`sub` is the account's immutable id and `gen` its token generation: removing the user or changing its password
bumps the generation in the database, and every request checks it, so older tokens stop working at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from sdqueue.bridge._accounts import Account
from sdqueue.config import BridgeSettings
from sdqueue.contracts import BridgeCode, ErrorCode
from sdqueue.contracts.errors import BridgeError

ACCESS_AUDIENCE = "sdqueue-bridge"
ACCESS_ISSUER = "sdqueue-bridge"
ALGORITHM = "HS256"
GENERATION_CLAIM = "gen"
CHALLENGE = {"WWW-Authenticate": "Bearer"}

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says: whose account, at which token generation."""

    user_id: str
    token_generation: int


def issue_access_token(account: Account, *, bridge: BridgeSettings, now: float | None = None) -> str:
    """Sign an access token for an account, valid for `bridge.access_token_ttl_s`.

    Raises:
        BridgeError: no token secret is configured.
    """
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": ACCESS_ISSUER,
        "aud": ACCESS_AUDIENCE,
        "sub": account.user_id,
        GENERATION_CLAIM: account.token_generation,
        "iat": issued_at,
        "exp": issued_at + bridge.access_token_ttl_s,
    }
    return jwt.encode(claims, _secret(bridge), algorithm=ALGORITHM)


def read_access_token(token: str, *, bridge: BridgeSettings) -> AccessClaims:
    """The account and generation an access token carries, after its signature, audience, issuer and expiry.

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
            options={"require": ["exp", "iat", "sub", GENERATION_CLAIM]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise BridgeError(ErrorCode.TOKEN_EXPIRED, "the access token has expired", headers=CHALLENGE) from exc
    except jwt.InvalidTokenError as exc:
        raise _rejected() from exc
    user_id, generation = claims["sub"], claims[GENERATION_CLAIM]
    if isinstance(user_id, str) and isinstance(generation, int):
        return AccessClaims(user_id=user_id, token_generation=generation)
    raise _rejected()


def _rejected() -> BridgeError:
    return BridgeError(ErrorCode.INVALID_TOKEN, "the access token was rejected", headers=CHALLENGE)


def _secret(bridge: BridgeSettings) -> str:
    if bridge.token_secret is None:
        raise BridgeError(BridgeCode.UNAVAILABLE, "the bridge has no token secret configured")
    return bridge.token_secret.get_secret_value()


async def current_account(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Account:
    """The authenticated caller's account (FastAPI dependency), checked against the database on every request.

    Raises:
        BridgeError: `unauthenticated` without a bearer token, `invalid_token` for a revoked or bad token,
            `token_expired`.
    """
    if not token:
        raise BridgeError(ErrorCode.UNAUTHENTICATED, "a bearer token is required", headers=CHALLENGE)
    state = request.app.state.bridge
    claims = read_access_token(token, bridge=state.settings.bridge)
    account: Account | None = await state.accounts.current(claims.user_id, token_generation=claims.token_generation)
    if account is None:
        raise BridgeError(ErrorCode.INVALID_TOKEN, "the access token was revoked", headers=CHALLENGE)
    return account


CurrentUser = Annotated[Account, Depends(current_account)]
