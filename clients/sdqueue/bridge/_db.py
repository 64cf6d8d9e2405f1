"""The bridge's state in a database (SQLAlchemy 2, async): users, jobs and failed sign-ins, under Alembic migrations.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) serves several bridge processes or hosts.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from sdqueue.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DEFAULT_TIMEOUT_S = 10.0
UPGRADE_HINT = "run `sdqueue bridge db upgrade`"
UPGRADE_LOCK_KEY = 0x73_64_71_75  # "sdqu": the PostgreSQL advisory lock that serialises upgrades


class SchemaMismatch(Exception):
    """The database's schema is not the one this bridge knows; `sdqueue bridge db upgrade` migrates it."""


class DatabaseUnavailable(Exception):
    """The database refused the connection, did not answer in time, or failed a statement while migrating.

    The message is safe to show a caller; `detail` (the driver's own words, which may name hosts) is for operators.
    """

    def __init__(self, message: str, *, cause: BaseException) -> None:
        super().__init__(message)
        self.detail = _reason(cause)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no offset, so one is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; a naive value is refused (it would be ambiguous)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back an aware UTC timestamp."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints, so later migrations (batch mode on SQLite) can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The bridge's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A user; never deleted (a removed name stays taken), and its tokens die when the generation moves."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Job(Base):
    """A job the bridge accepted, owned by a user id (not a name), with its last known status."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_id_created_at", "owner_id", "created_at"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    mode: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default="queued", server_default="queued")


class SignInFailure(Base):
    """One throttled event: a failed sign-in (scope `user` or `address`) or a sign-up (scope `signup`)."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_scope_key_at", "scope", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


@dataclass
class Database:
    """An engine and its session factory; `close` disposes of the pool."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for reads.

        Raises:
            DatabaseUnavailable: the database was lost, locked or too slow.
        """
        with database_errors():
            async with self.sessions() as session:
                yield session

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on leaving.

        Raises:
            DatabaseUnavailable: the database was lost, locked or too slow.
        """
        with database_errors():
            async with self.sessions.begin() as session:
                yield session

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a lost, locked or timed-out database into DatabaseUnavailable (integrity, data and SQL errors stay:
    they are bugs, or the caller's to handle)."""
    try:
        yield
    except (IntegrityError, DataError, ProgrammingError):
        raise
    except (DBAPIError, PoolTimeout, OSError) as exc:
        raise DatabaseUnavailable("the bridge database is unavailable", cause=exc) from exc


def database_url(settings: Settings) -> str:
    """The configured database URL, or SQLite at `<state_dir>/bridge.db`."""
    if settings.bridge.database_url is not None:
        return settings.bridge.database_url.get_secret_value()
    return f"sqlite+aiosqlite:///{settings.state_dir}/bridge.db"


def upgrade_database(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Create or migrate the schema to this code's head (sync: call it off any running event loop).

    Raises:
        DatabaseUnavailable: the database could not be reached or refused a migration statement.
    """
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds password hashes: owner only. SQLite gives its -wal and -shm files the same mode.
        path.touch(mode=0o600)
    try:
        asyncio.run(run_in_transaction(url, _upgrade_on, timeout_s=timeout_s))
    except (DBAPIError, OSError) as exc:
        raise DatabaseUnavailable("the bridge database cannot be migrated", cause=exc) from exc


async def open_database(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Database:
    """Connect, and check that the schema is at this code's head revision.

    Raises:
        SchemaMismatch: the database is empty or at another revision.
        DatabaseUnavailable: the database could not be reached.
    """
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        # Opening would create an empty file; say what to run instead.
        raise SchemaMismatch(f"the bridge database is empty, this bridge knows {head_revision()}: {UPGRADE_HINT}")
    engine = create_engine(url, timeout_s=timeout_s)
    try:
        current = await _read_revision(engine)
        check_revision(current)
    except BaseException:
        await engine.dispose()
        raise
    return Database(engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False))


def check_revision(current: str | None) -> None:
    """Raises SchemaMismatch unless `current` is this code's head revision."""
    head = head_revision()
    if current is None:
        raise SchemaMismatch(f"the bridge database is empty, this bridge knows {head}: {UPGRADE_HINT}")
    if current != head:
        raise SchemaMismatch(f"the bridge database is at revision {current}, this bridge knows {head}: {UPGRADE_HINT}")


@functools.cache
def head_revision() -> str:
    """The newest migration this code ships."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the bridge ships no migrations")
    return head


def create_engine(url: str, *, timeout_s: float) -> AsyncEngine:
    """An async engine with per-backend timeouts; SQLite gets WAL and foreign keys, and waits up to `timeout_s`
    for another process's write lock."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": timeout_s}, pool_timeout=timeout_s)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {"timeout": timeout_s, "command_timeout": timeout_s}
    # No pre-ping: it costs a round trip per checkout. After a database restart, the first statement on a dead
    # connection fails (DatabaseUnavailable, one 503) and the pool drops every connection older than it.
    return create_async_engine(url, connect_args=connect_args, pool_timeout=timeout_s)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL's usual setting: a commit is in the OS's hands at once (a killed process loses nothing), and the WAL
        # is synced at checkpoints rather than on every commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


async def _read_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current_revision)
    except (DBAPIError, OSError) as exc:
        raise DatabaseUnavailable("the bridge database cannot be reached", cause=exc) from exc


def _reason(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no detail'}"


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def run_in_transaction(url: str, work: Callable[[Connection], None], *, timeout_s: float) -> None:
    """Connect to `url` and run `work` on one connection in one transaction (the upgrade, Alembic's CLI)."""
    engine = create_engine(url, timeout_s=timeout_s)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(work)
    finally:
        await engine.dispose()


def _upgrade_on(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas started together may each run the upgrade: one migrates while the others wait, then find it done.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
