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
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from sdqueue.bridge._db import Database, SignInFailure, User
from sdqueue.bridge._throttle import (
    ADDRESS_SCOPE,
    SIGNUP_SCOPE,
    USER_SCOPE,
    Key,
    clear,
    prune,
    record,
    sign_in_wait_s,
    signup_wait_s,
)
from sdqueue.config import BridgeSettings

USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,64}$"
MAX_PASSWORD_BYTES = 1024


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
    """Users and their sign-ins, in the database; owns the thread pool argon2 runs in.

    Every method raises DatabaseUnavailable (from `sdqueue.bridge._db`) when the database is lost, locked or too slow.
    """

    def __init__(self, db: Database, *, bridge: BridgeSettings, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._bridge = bridge
        self._clock = clock
        self._hasher = PasswordHasher()
        self._executor = ThreadPoolExecutor(max_workers=bridge.hash_threads, thread_name_prefix="sdqueue-argon2")
        # Held from the lockout check to the failure's record, so parallel attempts pass a lockout only as many
        # as there are hash threads; and no attempt waits for a thread after its check.
        self._hash_slots = asyncio.Semaphore(bridge.hash_threads)
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
        signup: list[Key] = [] if address is None else [(SIGNUP_SCOPE, address)]
        async with self._hash_slots:
            if address is not None:
                await self._check_signups(address)
            if await self._name_taken(name):
                if signup:  # counted too: sign-up cannot probe names unthrottled
                    await record(self._db, signup, at=self._clock())
                raise UserExists(f"user {name!r} exists")
            password_hash = await self._hash(password)
            user = User(id=uuid.uuid4().hex, name=name, password_hash=password_hash, created_at=self._clock())
            await self._insert(user, signup=signup)
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
        async with self._db.reading() as session:
            rows = await session.scalars(select(User.name).where(User.removed_at.is_(None)))
            return sorted(rows)

    async def sign_in(self, name: str, password: str, *, address: str) -> Account:
        """Check a name and password, throttled per name and per client address.

        Raises:
            Throttled: too many recent failures for this name or address; no hash work was done.
            WrongCredentials: no active user has that name, or the password is not its (same work either way).
        """
        is_valid_name = re.fullmatch(USERNAME_PATTERN, name) is not None
        keys: list[Key] = [(ADDRESS_SCOPE, address)] + ([(USER_SCOPE, name)] if is_valid_name else [])
        user = await self._active_user(name) if is_valid_name else None
        async with self._hash_slots:
            wait_s = await sign_in_wait_s(self._db, keys, now=self._clock(), bridge=self._bridge)
            if wait_s > 0:
                raise Throttled("too many failed sign-ins; try again later", retry_after_s=math.ceil(wait_s))
            if not await self._verify(None if user is None else user.password_hash, password) or user is None:
                await record(self._db, keys, at=self._clock())
                await self._prune_if_due()
                raise WrongCredentials("wrong user name or password")
        await clear(self._db, (USER_SCOPE, name))
        if self._hasher.check_needs_rehash(user.password_hash):
            await self._rehash(user, password)
        return Account(user_id=user.id, name=user.name, token_generation=user.token_generation)

    async def current(self, user_id: str, *, token_generation: int) -> Account | None:
        """The account a token names, or None if the user was removed or its tokens retired since."""
        # Checked on every request: one Core select, no ORM object.
        statement = select(User.name).where(
            User.id == user_id, User.token_generation == token_generation, User.removed_at.is_(None)
        )
        async with self._db.reading() as session:
            name = await session.scalar(statement)
        return None if name is None else Account(user_id=user_id, name=name, token_generation=token_generation)

    def close(self) -> None:
        """Stop the hashing threads (waiting for any hash under way)."""
        self._executor.shutdown(wait=True)

    async def _rehash(self, user: User, password: str) -> None:
        """Store the password under the current argon2 parameters (tokens stay valid: the password is the same)."""
        password_hash = await self._hash(password)
        statement = (
            update(User)
            .where(User.id == user.id, User.password_hash == user.password_hash)
            .values(password_hash=password_hash)
        )
        async with self._db.writing() as session:
            await session.execute(statement)

    async def _check_signups(self, address: str) -> None:
        wait_s = await signup_wait_s(self._db, address, now=self._clock(), bridge=self._bridge)
        if wait_s > 0:
            raise Throttled("too many sign-ups from this address; try again later", retry_after_s=math.ceil(wait_s))

    async def _insert(self, user: User, *, signup: list[Key]) -> None:
        """Store a new user, and its sign-up's row in the same transaction."""
        try:
            async with self._db.writing() as session:
                session.add(user)
                session.add_all(SignInFailure(scope=scope, key=key, at=user.created_at) for scope, key in signup)
        except IntegrityError as exc:  # the same name, added by another process meanwhile
            raise UserExists(f"user {user.name!r} exists") from exc

    async def _prune_if_due(self) -> None:
        """Delete rows past their window, at most once per sign-in window per process."""
        if time.monotonic() - self._pruned_at_s >= self._bridge.sign_in_window_s:
            self._pruned_at_s = time.monotonic()
            await prune(self._db, now=self._clock(), bridge=self._bridge)

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
        async with self._db.reading() as session:
            return await session.scalar(select(User.id).where(User.name == name)) is not None

    async def _active_user(self, name: str) -> User | None:
        async with self._db.reading() as session:
            return await session.scalar(select(User).where(User.name == name, User.removed_at.is_(None)))

    async def _update_active(self, name: str, **values: object) -> None:
        statement = (
            update(User)
            .where(User.name == name, User.removed_at.is_(None))
            .values(token_generation=User.token_generation + 1, **values)
            .returning(User.id)
        )
        async with self._db.writing() as session:
            changed = await session.scalar(statement)
        if changed is None:
            raise UnknownUser(f"no user {name!r}")


def check_username(name: str) -> None:
    """Raises AccountError unless the name is 1-64 of letters, digits and `_ . @ + -`."""
    if not re.fullmatch(USERNAME_PATTERN, name):
        raise AccountError("a user name is 1-64 letters, digits or _ . @ + -")


def check_password(password: str) -> None:
    """Raises AccountError unless the password is 1 to 1024 bytes."""
    if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
        raise AccountError(f"the password must be 1 to {MAX_PASSWORD_BYTES} bytes")
