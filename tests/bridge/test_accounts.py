"""Accounts and jobs in the bridge's database, on SQLite and on PostgreSQL: users, sign-in throttling, token
generations, history by user id, and the schema check."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from argon2 import PasswordHasher
from fastapi import FastAPI
from sqlalchemy import Connection, select, text, update

from sdqueue.bridge._accounts import (
    AccountError,
    Accounts,
    Throttled,
    UnknownUser,
    UserExists,
    WrongCredentials,
)
from sdqueue.bridge._db import (
    Base,
    Database,
    DatabaseUnavailable,
    SchemaMismatch,
    SignInFailure,
    User,
    head_revision,
    open_database,
    upgrade_database,
)
from sdqueue.bridge._errors import install_error_handlers
from sdqueue.bridge._jobstore import JobRow, JobStore
from sdqueue.config import BridgeSettings
from tests.plugins.database import PostgresCluster

START = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
THROTTLED = BridgeSettings(
    sign_in_free_failures=2,
    sign_in_free_failures_per_address=2,
    sign_in_window_s=900,
    sign_in_backoff_s=1.0,
    sign_in_max_backoff_s=4.0,
    signups_per_address=2,
    signup_window_s=3600,
    hash_threads=2,
)


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = field(default=START)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    yield database
    await database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(db: Database, clock: Clock) -> Iterator[Accounts]:
    store = Accounts(db, bridge=THROTTLED, clock=clock)
    yield store
    store.close()


async def test_add_list_remove(accounts: Accounts):
    carol = await accounts.add("carol", "carol-password")
    await accounts.add("alice", "alice-password")

    assert await accounts.names() == ["alice", "carol"]
    assert len(carol.user_id) == 32
    assert carol.token_generation == 0
    await accounts.remove("carol")
    assert await accounts.names() == ["alice"]
    with pytest.raises(UnknownUser):
        await accounts.remove("carol")
    with pytest.raises(UnknownUser):
        await accounts.set_password("nobody", "new-password")


async def test_a_removed_name_is_never_reused(accounts: Accounts):
    await accounts.add("dave", "dave-password")
    with pytest.raises(UserExists):
        await accounts.add("dave", "other-password")
    await accounts.remove("dave")

    with pytest.raises(UserExists):
        await accounts.add("dave", "dave-password")
    assert await accounts.names() == []


@pytest.mark.parametrize(("name", "password"), [("../evil", "password"), ("", "password"), ("x" * 65, "password")])
async def test_names_are_restricted(accounts: Accounts, name: str, password: str):
    with pytest.raises(AccountError, match="user name"):
        await accounts.add(name, password)


@pytest.mark.parametrize("password", ["", "é" * 513])
async def test_passwords_are_1_to_1024_bytes(accounts: Accounts, password: str):
    with pytest.raises(AccountError, match="password"):
        await accounts.add("erin", password)


async def test_sign_in(accounts: Accounts):
    added = await accounts.add("alice", "alice-password")

    signed_in = await accounts.sign_in("alice", "alice-password", address="10.0.0.1")

    assert signed_in == added
    with pytest.raises(WrongCredentials):
        await accounts.sign_in("alice", "wrong-password", address="10.0.0.1")
    with pytest.raises(WrongCredentials):
        await accounts.sign_in("nobody", "alice-password", address="10.0.0.2")
    with pytest.raises(WrongCredentials):
        await accounts.sign_in("../evil", "alice-password", address="10.0.0.3")
    await accounts.remove("alice")
    with pytest.raises(WrongCredentials):
        await accounts.sign_in("alice", "alice-password", address="10.0.0.4")


async def _fail(accounts: Accounts, name: str, *, address: str) -> None:
    with pytest.raises(WrongCredentials):
        await accounts.sign_in(name, "wrong-password", address=address)


async def _throttled_s(accounts: Accounts, name: str, *, address: str) -> int:
    with pytest.raises(Throttled) as caught:
        await accounts.sign_in(name, "alice-password", address=address)
    return caught.value.retry_after_s


async def test_failed_sign_ins_lock_a_name_out_for_longer_each_time(accounts: Accounts, clock: Clock):
    await accounts.add("alice", "alice-password")
    addresses = iter(f"10.0.1.{index}" for index in range(100))  # one address each: only the name counts
    await _fail(accounts, "alice", address=next(addresses))
    await _fail(accounts, "alice", address=next(addresses))
    await _fail(accounts, "alice", address=next(addresses))  # the first past the two free ones: 1 s

    retry_after = [await _throttled_s(accounts, "alice", address=next(addresses))]
    for wait_s in (1, 2, 4):
        clock.advance(wait_s)
        await _fail(accounts, "alice", address=next(addresses))
        retry_after.append(await _throttled_s(accounts, "alice", address=next(addresses)))
    clock.advance(0.5)
    retry_after.append(await _throttled_s(accounts, "alice", address=next(addresses)))

    assert retry_after == [1, 2, 4, 4, 4]  # doubling, capped at 4 s; rounded up
    clock.advance(4)
    assert (await accounts.sign_in("alice", "alice-password", address=next(addresses))).name == "alice"
    await _fail(accounts, "alice", address=next(addresses))  # success cleared the name's failures
    await _fail(accounts, "alice", address=next(addresses))


async def test_failures_age_out_of_the_window(accounts: Accounts, clock: Clock):
    for index in range(3):
        await _fail(accounts, "alice", address=f"10.0.2.{index}")
    assert await _throttled_s(accounts, "alice", address="10.0.2.9") == 1

    clock.advance(THROTTLED.sign_in_window_s + 1)

    await _fail(accounts, "alice", address="10.0.2.10")


async def test_rows_past_their_window_are_pruned(db: Database, clock: Clock):
    first = Accounts(db, bridge=THROTTLED, clock=clock)
    try:
        await first.add("old", "old-password", address="203.0.113.1")
        await _fail(first, "alice", address="203.0.113.1")
    finally:
        first.close()
    clock.advance(THROTTLED.signup_window_s + 1)
    second = Accounts(db, bridge=THROTTLED, clock=clock)
    try:
        await _fail(second, "bob", address="203.0.113.2")  # a process's first failure prunes
    finally:
        second.close()

    async with db.sessions() as session:
        rows = (await session.execute(select(SignInFailure.scope, SignInFailure.key))).all()
    assert sorted(tuple(row) for row in rows) == [("address", "203.0.113.2"), ("user", "bob")]


async def test_failed_sign_ins_lock_an_address_out_whatever_the_names(accounts: Accounts, clock: Clock):
    await accounts.add("alice", "alice-password")
    for name in ("mallory", "trent", "alice"):
        await _fail(accounts, name, address="192.0.2.7")

    assert await _throttled_s(accounts, "alice", address="192.0.2.7") == 1
    assert await _throttled_s(accounts, "someone-else", address="192.0.2.7") == 1
    assert (await accounts.sign_in("alice", "alice-password", address="192.0.2.8")).name == "alice"
    clock.advance(1)
    await _fail(accounts, "victor", address="192.0.2.7")
    assert await _throttled_s(accounts, "alice", address="192.0.2.7") == 2


async def test_sign_ups_are_throttled_per_address(accounts: Accounts, clock: Clock):
    await accounts.add("first", "password-1", address="198.51.100.1")
    with pytest.raises(UserExists):
        await accounts.add("first", "password-1", address="198.51.100.1")  # a probe of a taken name counts too
    clock.advance(60)

    with pytest.raises(Throttled) as caught:
        await accounts.add("third", "password-3", address="198.51.100.1")

    assert caught.value.retry_after_s == THROTTLED.signup_window_s - 60
    await accounts.add("fourth", "password-4", address="198.51.100.2")
    await accounts.add("fifth", "password-5")  # no address: the operator's CLI
    clock.advance(THROTTLED.signup_window_s - 59)
    await accounts.add("third", "password-3", address="198.51.100.1")
    assert await accounts.names() == ["fifth", "first", "fourth", "third"]


async def test_a_password_change_or_removal_retires_tokens(accounts: Accounts):
    alice = await accounts.add("alice", "alice-password")
    assert await accounts.current(alice.user_id, token_generation=0) == alice

    await accounts.set_password("alice", "new-password")

    assert await accounts.current(alice.user_id, token_generation=0) is None
    renewed = await accounts.sign_in("alice", "new-password", address="10.0.3.1")
    assert renewed.token_generation == 1
    assert await accounts.current(alice.user_id, token_generation=1) == renewed
    with pytest.raises(WrongCredentials):
        await accounts.sign_in("alice", "alice-password", address="10.0.3.1")
    await accounts.remove("alice")
    assert await accounts.current(alice.user_id, token_generation=1) is None
    assert await accounts.current(alice.user_id, token_generation=2) is None
    assert await accounts.current("0" * 32, token_generation=0) is None


async def test_a_hash_under_old_parameters_is_renewed_at_sign_in(accounts: Accounts, db: Database):
    alice = await accounts.add("alice", "alice-password")
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("alice-password")
    async with db.writing() as session:
        await session.execute(update(User).where(User.id == alice.user_id).values(password_hash=weak))

    signed_in = await accounts.sign_in("alice", "alice-password", address="10.0.5.1")

    async with db.reading() as session:
        stored = await session.scalar(select(User.password_hash).where(User.id == alice.user_id))
    assert stored is not None
    assert stored != weak
    assert not PasswordHasher().check_needs_rehash(stored)
    assert signed_in == alice  # same password, same tokens
    assert await accounts.sign_in("alice", "alice-password", address="10.0.5.1") == alice


def _job(job_id: str, *, owner_id: str, created_at: datetime) -> JobRow:
    return JobRow(
        job_id=job_id,
        owner_id=owner_id,
        created_at=created_at,
        mode="txt2img",
        model="default",
        prompt=f"prompt of {job_id}",
        width=64,
        height=64,
        steps=2,
    )


async def test_jobs_belong_to_their_owner_newest_first(accounts: Accounts, db: Database):
    alice = await accounts.add("alice", "alice-password")
    bob = await accounts.add("bob", "bob-password")
    jobs = JobStore(db)
    await jobs.add(_job("a1", owner_id=alice.user_id, created_at=START))
    await jobs.add(_job("a3", owner_id=alice.user_id, created_at=START + timedelta(seconds=1)))
    await jobs.add(_job("a2", owner_id=alice.user_id, created_at=START + timedelta(seconds=1)))
    await jobs.add(_job("b1", owner_id=bob.user_id, created_at=START + timedelta(seconds=2)))

    recent = await jobs.recent(alice.user_id, limit=10)

    assert [row.job_id for row in recent] == ["a3", "a2", "a1"]
    assert recent[-1] == _job("a1", owner_id=alice.user_id, created_at=START)
    assert recent[-1].created_at.tzinfo is not None
    assert [row.job_id for row in await jobs.recent(alice.user_id, limit=2)] == ["a3", "a2"]
    assert await jobs.get("b1", owner_id=alice.user_id) is None
    assert await jobs.get("b1", owner_id=bob.user_id) == _job(
        "b1", owner_id=bob.user_id, created_at=START + timedelta(seconds=2)
    )


async def test_job_status_and_delete(accounts: Accounts, db: Database):
    alice = await accounts.add("alice", "alice-password")
    jobs = JobStore(db)
    await jobs.add(_job("j1", owner_id=alice.user_id, created_at=START))

    await jobs.set_status("j1", "succeeded")
    await jobs.set_status("unknown", "failed")

    stored = await jobs.get("j1", owner_id=alice.user_id)
    assert stored is not None
    assert stored.status == "succeeded"
    await jobs.delete("j1")
    assert await jobs.get("j1", owner_id=alice.user_id) is None
    assert await jobs.recent(alice.user_id, limit=5) == []


async def test_history_stays_with_the_user_id(accounts: Accounts, db: Database):
    alice = await accounts.add("alice", "alice-password")
    jobs = JobStore(db)
    await jobs.add(_job("j1", owner_id=alice.user_id, created_at=START))
    await accounts.remove("alice")

    with pytest.raises(UserExists):
        await accounts.add("alice", "alice-password")
    assert [row.job_id for row in await jobs.recent(alice.user_id, limit=5)] == ["j1"]


async def test_an_empty_database_is_refused(blank_database_url: str):
    with pytest.raises(SchemaMismatch, match=r"is empty.*sdqueue bridge db upgrade"):
        await open_database(blank_database_url)


async def test_an_unknown_revision_is_refused(database_url: str):
    database = await open_database(database_url)
    async with database.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    await database.close()

    with pytest.raises(SchemaMismatch, match=rf"at revision ffff, this bridge knows {head_revision()}"):
        await open_database(database_url)


async def test_concurrent_upgrades_of_one_postgresql_database_both_succeed(postgres_cluster: PostgresCluster):
    url = await postgres_cluster.create_database()
    try:
        await asyncio.gather(*(asyncio.to_thread(upgrade_database, url) for _ in range(3)))
        database = await open_database(url)
        await database.close()
    finally:
        await postgres_cluster.drop_database(url)


async def test_upgrade_is_idempotent(database_url: str):
    await asyncio.to_thread(upgrade_database, database_url)

    database = await open_database(database_url)
    await database.close()


async def test_a_locked_sqlite_database_is_unavailable(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path}/bridge.db"
    await asyncio.to_thread(upgrade_database, url)
    db = await open_database(url, timeout_s=0.2)
    accounts = Accounts(db, bridge=THROTTLED)
    await accounts.add("alice", "alice-password")
    blocker = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseUnavailable, match=r"^the bridge database is unavailable$") as caught:
            await accounts.remove("alice")
        assert "locked" in caught.value.detail
        with pytest.raises(DatabaseUnavailable):
            await JobStore(db).set_status("j1", "failed")
    finally:
        blocker.close()
        accounts.close()
        await db.close()


async def test_an_unavailable_database_answers_503(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path}/bridge.db"
    await asyncio.to_thread(upgrade_database, url)
    db = await open_database(url, timeout_s=0.2)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/status")
    async def set_status() -> dict[str, str]:
        await JobStore(db).set_status("j1", "failed")
        return {}

    blocker = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
            response = await http.post("/status")
    finally:
        blocker.close()
        await db.close()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert "locked" not in response.text


async def test_a_lost_postgresql_database_is_unavailable(postgres_cluster: PostgresCluster):
    url = await postgres_cluster.create_database()
    await asyncio.to_thread(upgrade_database, url)
    db = await open_database(url, timeout_s=2.0)
    accounts = Accounts(db, bridge=THROTTLED)
    try:
        alice = await accounts.add("alice", "alice-password")
        await postgres_cluster.drop_database(url)
        with pytest.raises(DatabaseUnavailable):
            await accounts.current(alice.user_id, token_generation=0)
        with pytest.raises(DatabaseUnavailable):
            await JobStore(db).recent(alice.user_id, limit=5)
    finally:
        accounts.close()
        await db.close()


async def test_the_pool_recovers_when_postgresql_ends_its_connections(postgres_cluster: PostgresCluster):
    url = await postgres_cluster.create_database()
    await asyncio.to_thread(upgrade_database, url)
    db = await open_database(url)
    accounts = Accounts(db, bridge=THROTTLED)
    try:
        alice = await accounts.add("alice", "alice-password")
        await postgres_cluster.disconnect_all(url)
        outcomes: list[object] = []
        for _ in range(3):
            try:
                outcomes.append(await accounts.current(alice.user_id, token_generation=0))
            except DatabaseUnavailable:
                outcomes.append("unavailable")
    finally:
        accounts.close()
        await db.close()
        await postgres_cluster.drop_database(url)

    assert outcomes.count("unavailable") <= 1  # the first statement on a dead connection at most
    assert outcomes[-1] == alice


def _schema_differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_the_migrations_build_the_models_schema(db: Database):
    async with db.engine.connect() as connection:
        differences = await connection.run_sync(_schema_differences)

    assert differences == []


SIGN_UP_BURST = """
import asyncio, sys
from sdqueue.bridge._accounts import Account, Accounts, UserExists
from sdqueue.bridge._db import open_database
from sdqueue.config import BridgeSettings
from tests.plugins.database import PostgresCluster

async def main(url, prefix, count):
    db = await open_database(url)
    accounts = Accounts(db, bridge=BridgeSettings(hash_threads=2))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    names = [f"{prefix}-{index}" for index in range(count)] + ["shared"]
    results = await asyncio.gather(*(accounts.add(name, name + "-password") for name in names), return_exceptions=True)
    accounts.close()
    await db.close()
    exists = sum(isinstance(result, UserExists) for result in results)
    others = [repr(result) for result in results if not isinstance(result, Account | UserExists)]
    print(exists, others)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _start_burst(url: str, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SIGN_UP_BURST, url, prefix, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_50_concurrent_sign_ups_from_two_processes_all_persist(database_url: str, db: Database):
    processes = [_start_burst(database_url, prefix, 25) for prefix in ("left", "right")]
    try:
        for process in processes:  # both connected before either adds
            assert process.stdout is not None
            assert await asyncio.to_thread(process.stdout.readline) == "ready\n", process.stderr
        outcomes = await asyncio.gather(*(asyncio.to_thread(process.communicate, "go\n", 240) for process in processes))
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert all(process.returncode == 0 for process in processes), outcomes
    # Each process added its 25; both tried "shared", and exactly one was told it exists.
    assert sorted(stdout.strip() for stdout, _ in outcomes) == ["0 []", "1 []"], outcomes
    accounts = Accounts(db, bridge=BridgeSettings(hash_threads=2))
    try:
        expected = sorted([f"{side}-{index}" for side in ("left", "right") for index in range(25)] + ["shared"])
        assert await accounts.names() == expected
        signed_in = await asyncio.gather(
            *(accounts.sign_in(name, f"{name}-password", address="127.0.0.1") for name in expected)
        )
        assert [account.name for account in signed_in] == expected
        assert len({account.user_id for account in signed_in}) == len(expected)
    finally:
        accounts.close()


async def test_parallel_guesses_pass_a_lockout_only_as_many_as_there_are_hash_threads(accounts: Accounts):
    await accounts.add("alice", "alice-password")

    outcomes = await asyncio.gather(
        *(accounts.sign_in("alice", f"guess-{index}", address=f"10.0.4.{index}") for index in range(12)),
        return_exceptions=True,
    )

    wrong = sum(isinstance(outcome, WrongCredentials) for outcome in outcomes)
    throttled = sum(isinstance(outcome, Throttled) for outcome in outcomes)
    assert wrong <= THROTTLED.sign_in_free_failures + THROTTLED.hash_threads
    assert wrong + throttled == 12
