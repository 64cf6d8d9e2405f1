"""Sign-in and sign-up throttling, counted in the bridge's database so it holds across processes and hosts.

Only failures count (and sign-ups), so parallel sign-ins that succeed never throttle each other. Callers check
right before the hash and record right after it, holding one of the process's hash slots: parallel attempts
get past a lockout only as many as there are hash threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from sdqueue.bridge._db import Database, SignInFailure
from sdqueue.config import BridgeSettings

USER_SCOPE = "user"
ADDRESS_SCOPE = "address"
SIGNUP_SCOPE = "signup"
MAX_KEY_CHARS = 255
# Keeps 2 ** n finite whatever the count; the cap applies long before.
MAX_DOUBLINGS = 64

Key = tuple[str, str]  # (scope, key)


async def record(db: Database, keys: Sequence[Key], *, at: datetime) -> None:
    """Store one failed sign-in (or one sign-up) as a row per `(scope, key)`."""
    async with db.writing() as session:
        session.add_all(SignInFailure(scope=scope, key=key[:MAX_KEY_CHARS], at=at) for scope, key in keys)


def lockout_s(failures: int, *, scope: str, bridge: BridgeSettings) -> float:
    """The lockout after `failures` failures of a key in the window: none while free, then doubling up to the cap.

    An address gets more free failures than a name: many people may share it behind a NAT.
    """
    free = bridge.sign_in_free_failures_per_address if scope == ADDRESS_SCOPE else bridge.sign_in_free_failures
    over = failures - free
    if over <= 0:
        return 0.0
    doubled = bridge.sign_in_backoff_s * 2 ** min(over - 1, MAX_DOUBLINGS)
    return float(min(doubled, bridge.sign_in_max_backoff_s))


async def sign_in_wait_s(db: Database, keys: Sequence[Key], *, now: datetime, bridge: BridgeSettings) -> float:
    """How long the recent failures still lock out any of these keys (0: none is locked out)."""
    window_start = now - timedelta(seconds=bridge.sign_in_window_s)
    wait_s = 0.0
    async with db.reading() as session:
        for scope, key in keys:
            statement = select(func.count(), func.max(SignInFailure.at)).where(
                SignInFailure.scope == scope, SignInFailure.key == key[:MAX_KEY_CHARS], SignInFailure.at > window_start
            )
            count, latest = (await session.execute(statement)).one()
            if latest is not None:
                wait_s = max(wait_s, lockout_s(count, scope=scope, bridge=bridge) - (now - latest).total_seconds())
    return wait_s


async def signup_wait_s(db: Database, address: str, *, now: datetime, bridge: BridgeSettings) -> float:
    """How long until the address may sign up again (0: it may now)."""
    window = timedelta(seconds=bridge.signup_window_s)
    statement = select(SignInFailure.at).where(
        SignInFailure.scope == SIGNUP_SCOPE,
        SignInFailure.key == address[:MAX_KEY_CHARS],
        SignInFailure.at > now - window,
    )
    async with db.reading() as session:
        times = sorted(await session.scalars(statement), reverse=True)
    limit = bridge.signups_per_address
    if len(times) < limit:
        return 0.0
    # The slot that frees first is the oldest of the newest `limit`.
    return max((times[limit - 1] + window - now).total_seconds(), 1.0)


async def clear(db: Database, key: Key) -> None:
    """Forget every row of one key (a name's failures, once it signed in)."""
    scope, value = key
    async with db.writing() as session:
        await session.execute(
            delete(SignInFailure).where(SignInFailure.scope == scope, SignInFailure.key == value[:MAX_KEY_CHARS])
        )


async def prune(db: Database, *, now: datetime, bridge: BridgeSettings) -> None:
    """Delete the rows that no longer count."""
    sign_in_cutoff = now - timedelta(seconds=bridge.sign_in_window_s)
    signup_cutoff = now - timedelta(seconds=bridge.signup_window_s)
    async with db.writing() as session:
        await session.execute(
            delete(SignInFailure).where(SignInFailure.scope != SIGNUP_SCOPE, SignInFailure.at < sign_in_cutoff)
        )
        await session.execute(
            delete(SignInFailure).where(SignInFailure.scope == SIGNUP_SCOPE, SignInFailure.at < signup_cutoff)
        )
