"""Accounts in the bridge's database: argon2 hashes in an executor of their own, sign-in throttling that holds
across processes (failures are rows), and a token generation that retires a user's tokens."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Delete, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sdqueue.bridge._db import Database, SignInFailure, User
from sdqueue.config import BridgeSettings

USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,64}$"
MAX_PASSWORD_BYTES = 1024
USER_SCOPE = "user"
ADDRESS_SCOPE = "address"
SIGNUP_SCOPE = "signup"
MAX_KEY_CHARS = 255


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Account:
    """A signed-in (or current) user: its immutable id, its name and the generation its tokens must carry."""

    user_id: str
    name: str
    token_generation: int


class AccountError(Exception):
    """An account operation was refused; the message is safe to show."""


class UserExists(AccountError):
    """The name is taken, now or by a removed user (names are never reused)."""


class UnknownUser(AccountError):
    """No active user has that name."""


class WrongCredentials(AccountError):
    """The name or the password is wrong (which one is not said)."""


class Throttled(AccountError):
    """Too many failed sign-ins or sign-ups; try again after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Accounts:
    """Users and their sign-ins, in the database; owns the thread pool argon2 runs in."""

    def __init__(self, db: Database, *, bridge: BridgeSettings, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._bridge = bridge
        self._clock = clock
        self._hasher = PasswordHasher()
        self._executor = ThreadPoolExecutor(max_workers=bridge.hash_threads, thread_name_prefix="sdqueue-argon2")
        self._dummy_hash: str | None = None
        self._pruned_at_s = -math.inf

    async def add(self, name: str, password: str, *, address: str | None = None) -> Account:
        """Create a user; with `address` (a sign-up), that address's sign-ups are throttled.

        Raises:
            UserExists: the name is taken or was used before.
            Throttled: the address made too many sign-ups lately.
            AccountError: the name or password is not acceptable.
        """
        check_username(name)
        check_password(password)
        if address is not None:
            await self._check_signups(address)
        if await self._name_taken(name):
            if address is not None:
                await self._record_signup(address)
            raise UserExists(f"user {name!r} exists")
        password_hash = await self._hash(password)
        user = User(
            id=uuid.uuid4().hex, name=name, password_hash=password_hash, created_at=self._clock(), token_generation=0
        )
        try:
            async with self._db.sessions.begin() as session:
                session.add(user)
                if address is not None:
                    session.add(SignInFailure(scope=SIGNUP_SCOPE, key=_key(address), at=user.created_at))
        except IntegrityError as exc:
            raise UserExists(f"user {name!r} exists") from exc
        return Account(user_id=user.id, name=name, token_generation=0)

    async def remove(self, name: str) -> None:
        """Mark a user removed (its name stays taken) and retire its tokens.

        Raises:
            UnknownUser: no active user has that name.
        """
        await self._update_active(name, removed_at=self._clock())

    async def set_password(self, name: str, password: str) -> None:
        """Replace a user's password and retire its tokens.

        Raises:
            UnknownUser: no active user has that name.
            AccountError: the password is not acceptable.
        """
        check_password(password)
        await self._update_active(name, password_hash=await self._hash(password))

    async def names(self) -> list[str]:
        """The active users' names, sorted."""
        async with self._db.sessions() as session:
            rows = await session.scalars(select(User.name).where(User.removed_at.is_(None)))
            return sorted(rows)

    async def sign_in(self, name: str, password: str, *, address: str) -> Account:
        """Check a name and password, throttled per name and per client address.

        Raises:
            Throttled: too many recent failures for this name or address; no hash work was done.
            WrongCredentials: no active user has that name, or the password is not its (same work either way).
        """
        is_valid_name = re.fullmatch(USERNAME_PATTERN, name) is not None
        keys = [(ADDRESS_SCOPE, _key(address))] + ([(USER_SCOPE, name)] if is_valid_name else [])
        await self._check_lockouts(keys)
        user = await self._active_user(name) if is_valid_name else None
        if not await self._verify(None if user is None else user.password_hash, password) or user is None:
            await self._record_failures(keys)
            raise WrongCredentials("wrong user name or password")
        async with self._db.sessions.begin() as session:
            await session.execute(_delete_failures(USER_SCOPE, name))
        return Account(user_id=user.id, name=user.name, token_generation=user.token_generation)

    async def current(self, user_id: str, *, token_generation: int) -> Account | None:
        """The account a token names, or None if the user was removed or its tokens retired since."""
        async with self._db.sessions() as session:
            user = await session.get(User, user_id)
        if user is None or user.removed_at is not None or user.token_generation != token_generation:
            return None
        return Account(user_id=user.id, name=user.name, token_generation=user.token_generation)

    def close(self) -> None:
        """Stop the hashing threads (waiting for any hash under way)."""
        self._executor.shutdown(wait=True)

    async def _hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def _verify(self, password_hash: str | None, password: str) -> bool:
        """Verify against the hash, or against a dummy one so an unknown name costs the same time."""
        if password_hash is None:
            password_hash = await self._dummy()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._matches, password_hash, password)

    def _matches(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password.encode()[:MAX_PASSWORD_BYTES])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(uuid.uuid4().hex)
        return self._dummy_hash

    async def _name_taken(self, name: str) -> bool:
        async with self._db.sessions() as session:
            return await session.scalar(select(User.id).where(User.name == name)) is not None

    async def _active_user(self, name: str) -> User | None:
        async with self._db.sessions() as session:
            return await session.scalar(select(User).where(User.name == name, User.removed_at.is_(None)))

    async def _update_active(self, name: str, **values: object) -> None:
        statement = (
            update(User)
            .where(User.name == name, User.removed_at.is_(None))
            .values(token_generation=User.token_generation + 1, **values)
        )
        async with self._db.sessions.begin() as session:
            changed = await session.scalar(statement.returning(User.id))
        if changed is None:
            raise UnknownUser(f"no user {name!r}")

    async def _check_lockouts(self, keys: list[tuple[str, str]]) -> None:
        """Raises Throttled if any key is locked out now."""
        window_start = self._clock() - timedelta(seconds=self._bridge.sign_in_window_s)
        async with self._db.sessions() as session:
            for scope, key in keys:
                count, latest = await _failures_since(session, scope, key, since=window_start)
                lockout_s = self._lockout_s(count, free=self._free_failures(scope))
                remaining_s = lockout_s - (self._clock() - latest).total_seconds() if latest else 0.0
                if remaining_s > 0:
                    raise Throttled("too many failed sign-ins; try again later", retry_after_s=math.ceil(remaining_s))

    def _free_failures(self, scope: str) -> int:
        """Failures a key may have before lockouts start: an address is shared by many people behind a NAT."""
        if scope == ADDRESS_SCOPE:
            return self._bridge.sign_in_free_failures_per_address
        return self._bridge.sign_in_free_failures

    def _lockout_s(self, failures: int, *, free: int) -> float:
        """The lockout after `failures` failures in the window: none while free, then doubling up to the cap."""
        over = failures - free
        if over <= 0:
            return 0.0
        # min() on the exponent first keeps 2 ** over finite for any count.
        doubled = self._bridge.sign_in_backoff_s * 2 ** min(over - 1, 64)
        return float(min(doubled, self._bridge.sign_in_max_backoff_s))

    async def _record_failures(self, keys: list[tuple[str, str]]) -> None:
        now = self._clock()
        async with self._db.sessions.begin() as session:
            session.add_all(SignInFailure(scope=scope, key=key, at=now) for scope, key in keys)
            await self._prune_if_due(session)

    async def _check_signups(self, address: str) -> None:
        window = timedelta(seconds=self._bridge.signup_window_s)
        async with self._db.sessions() as session:
            statement = select(SignInFailure.at).where(
                SignInFailure.scope == SIGNUP_SCOPE,
                SignInFailure.key == _key(address),
                SignInFailure.at > self._clock() - window,
            )
            times = sorted(await session.scalars(statement), reverse=True)
        if len(times) >= self._bridge.signups_per_address:
            # The slot that frees first is the oldest of the newest `signups_per_address`.
            frees_at = times[self._bridge.signups_per_address - 1] + window
            remaining_s = max((frees_at - self._clock()).total_seconds(), 1.0)
            raise Throttled(
                "too many sign-ups from this address; try again later", retry_after_s=math.ceil(remaining_s)
            )

    async def _record_signup(self, address: str) -> None:
        """Count a sign-up attempt on a taken name too, so sign-up cannot probe names unthrottled."""
        async with self._db.sessions.begin() as session:
            session.add(SignInFailure(scope=SIGNUP_SCOPE, key=_key(address), at=self._clock()))

    async def _prune_if_due(self, session: AsyncSession) -> None:
        """Delete rows past their window, at most once per sign-in window per process."""
        if time.monotonic() - self._pruned_at_s < self._bridge.sign_in_window_s:
            return
        self._pruned_at_s = time.monotonic()
        now = self._clock()
        sign_in_cutoff = now - timedelta(seconds=self._bridge.sign_in_window_s)
        signup_cutoff = now - timedelta(seconds=self._bridge.signup_window_s)
        await session.execute(
            delete(SignInFailure).where(SignInFailure.scope != SIGNUP_SCOPE, SignInFailure.at < sign_in_cutoff)
        )
        await session.execute(
            delete(SignInFailure).where(SignInFailure.scope == SIGNUP_SCOPE, SignInFailure.at < signup_cutoff)
        )


def check_username(name: str) -> None:
    """Raises AccountError unless the name is 1-64 of letters, digits and `_ . @ + -`."""
    if not re.fullmatch(USERNAME_PATTERN, name):
        raise AccountError("a user name is 1-64 letters, digits or _ . @ + -")


def check_password(password: str) -> None:
    """Raises AccountError unless the password is 1 to 1024 bytes."""
    if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
        raise AccountError(f"the password must be 1 to {MAX_PASSWORD_BYTES} bytes")


async def _failures_since(
    session: AsyncSession, scope: str, key: str, *, since: datetime
) -> tuple[int, datetime | None]:
    statement = select(func.count(), func.max(SignInFailure.at)).where(
        SignInFailure.scope == scope, SignInFailure.key == key, SignInFailure.at > since
    )
    count, latest = (await session.execute(statement)).one()
    return int(count), latest


def _delete_failures(scope: str, key: str) -> Delete:
    return delete(SignInFailure).where(SignInFailure.scope == scope, SignInFailure.key == key)


def _key(value: str) -> str:
    return value[:MAX_KEY_CHARS]
