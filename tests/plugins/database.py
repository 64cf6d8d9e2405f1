"""Fixtures for the bridge's database, on both backends: SQLite in a temporary file, and PostgreSQL 15 in a cluster
the session starts in a temporary directory (as the `postgres` user when run as root: initdb refuses root).

Each test gets a fresh database; a session-scoped fixture can make its own with
`postgres_cluster.create_database()` and `upgrade_database`. Missing PostgreSQL binaries fail the run under
`CI=true` and skip otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from sdqueue.bridge._db import upgrade_database
from tests.plugins.services import service_missing

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_USER = "postgres"  # the OS user the cluster runs as when the tests run as root, and its superuser
POSTGRES_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster: where it listens, and how to reach its maintenance database."""

    port: int
    data_dir: Path

    def url(self, database: str, *, driver: str = "postgresql+asyncpg") -> str:
        """A URL for one of its databases (trust authentication on loopback)."""
        return f"{driver}://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """Create an empty database with a fresh name and return its URL."""
        name = f"sdqueue_test_{secrets.token_hex(6)}"
        await self._maintenance(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        """Drop a database `create_database` made, whoever is still connected to it."""
        name = url.rsplit("/", 1)[1]
        await self._maintenance(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def disconnect_all(self, url: str) -> None:
        """End every connection to one database, as a server restart would."""
        name = url.rsplit("/", 1)[1]
        await self._maintenance("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)

    async def _maintenance(self, statement: str, *arguments: str) -> None:
        connection = await asyncpg.connect(self.url("postgres", driver="postgresql"))
        try:
            await connection.execute(statement, *arguments)
        finally:
            await connection.close()


def _as_cluster_user() -> list[str]:
    return ["runuser", "-u", POSTGRES_USER, "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(*args: str) -> None:
    subprocess.run([*_as_cluster_user(), *args], check=True, capture_output=True, timeout=POSTGRES_START_TIMEOUT_S)


def _start_cluster(root: Path) -> PostgresCluster:
    data_dir, socket_dir, port = root / "data", root / "sockets", _free_port()
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, user=POSTGRES_USER)
        shutil.chown(socket_dir, user=POSTGRES_USER)
    _run(str(POSTGRES_BIN / "initdb"), "-D", str(data_dir), "-U", POSTGRES_USER, "-A", "trust", "-E", "UTF8", "-N")
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _run(
        str(POSTGRES_BIN / "pg_ctl"), "-D", str(data_dir), "-l", str(root / "server.log"), "-o", options, "-w", "start"
    )
    return PostgresCluster(port=port, data_dir=data_dir)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL 15 cluster for the session, on a free loopback port; stopped and deleted at the end."""
    if not (POSTGRES_BIN / "initdb").exists():
        service_missing(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}/initdb): apt-get install postgresql")
    # Not under pytest's temporary root: that one is private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="sdqueue-postgres-"))
    try:
        cluster = _start_cluster(root)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        service_missing(f"cannot start PostgreSQL: {exc.stderr.decode(errors='replace')[-500:]}")
    try:
        yield cluster
    finally:
        try:
            _run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database on each backend; dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/bridge.db"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = await cluster.create_database()
    try:
        yield url
    finally:
        await cluster.drop_database(url)


@pytest_asyncio.fixture
async def database_url(blank_database_url: str) -> str:
    """The URL of a fresh database on each backend, upgraded to this code's schema."""
    await asyncio.to_thread(upgrade_database, blank_database_url)
    return blank_database_url
