"""The bridge against the real stack: in-process (httpx over ASGI, lifespan run) and as a `sdqueue bridge` process."""

from __future__ import annotations

import asyncio
import io
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from PIL import Image
from pydantic import SecretStr

from sdqueue.bridge import create_app
from sdqueue.bridge._accounts import Accounts
from sdqueue.bridge._db import open_database, upgrade_database
from sdqueue.client import SdqueueClient
from sdqueue.config import BridgeSettings, LimitSettings, Settings
from sdqueue.contracts.topology import REQUESTS_EXCHANGE, request_queue_arguments, requests_queue
from sdqueue.devstack.stack import stop_process, worker_environment
from tests.plugins.database import PostgresCluster

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}
BRIDGE_READY_TIMEOUT_S = 30.0
# Bridge-side caps (the worker keeps its own). The in-process bridge allows a slow job to cancel; the HTTP server
# that schemathesis explores allows only quick ones.
BRIDGE_LIMITS = LimitSettings(max_pixels=256 * 256, max_steps=150, max_images=2)
LIVE_LIMITS = LimitSettings(max_pixels=128 * 128, max_steps=60, max_images=2)
PARKED_MODEL = "parked"


def make_bridge_settings(stack_settings: Settings, *, database_url: str, allow_signup: bool = False) -> Settings:
    """The stack's settings plus a bridge group for tests: tiny compat images, small uploads, short waits."""
    bridge = BridgeSettings(
        host="127.0.0.1",
        port=free_port(),
        token_secret=SecretStr(secrets.token_urlsafe(40)),
        database_url=SecretStr(database_url),
        allow_signup=allow_signup,
        max_upload_bytes=256 * 1024,
        max_wait_s=120.0,
        compat_width=64,
        compat_height=64,
        compat_steps=2,
    )
    return stack_settings.model_copy(update={"bridge": bridge, "limits": BRIDGE_LIMITS})


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def png_bytes(size: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small valid PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture(scope="session", params=["sqlite", "postgresql"])
async def bridge_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session bridge's database, on each backend in turn, upgraded, with alice and bob."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('bridge-db')}/bridge.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = await cluster.create_database()
    await asyncio.to_thread(upgrade_database, url)
    await add_users(url, PASSWORDS)
    return url


@pytest_asyncio.fixture
async def postgres_bridge_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh PostgreSQL database for one test, upgraded, with alice and bob."""
    url = await postgres_cluster.create_database()
    await asyncio.to_thread(upgrade_database, url)
    await add_users(url, PASSWORDS)
    return url


async def add_users(url: str, passwords: dict[str, str]) -> None:
    """Create users in a bridge database."""
    database = await open_database(url)
    accounts = Accounts(database, bridge=BridgeSettings())
    try:
        for name, password in passwords.items():
            await accounts.add(name, password)
    finally:
        accounts.close()
        await database.close()


@pytest.fixture(scope="session")
def bridge_settings(stack_settings: Settings, bridge_database_url: str) -> Settings:
    """Settings of the session's bridge; one test address signs in for every test, so it may fail more often."""
    settings = make_bridge_settings(stack_settings, database_url=bridge_database_url)
    bridge = settings.bridge.model_copy(update={"sign_in_free_failures_per_address": 10_000})
    return settings.model_copy(update={"bridge": bridge})


@pytest_asyncio.fixture(scope="session")
async def parked_model(stack_settings: Settings, client: SdqueueClient) -> AsyncIterator[str]:
    """A model alias whose queue exists but no worker consumes: its jobs stay queued.

    Each step opens a connection of its own: the fault suite restarts the broker during the session.
    """
    url = stack_settings.broker.url.get_secret_value()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            requests_queue(PARKED_MODEL), durable=True, arguments=request_queue_arguments()
        )
        await queue.bind(REQUESTS_EXCHANGE, routing_key=PARKED_MODEL)
    yield PARKED_MODEL
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(requests_queue(PARKED_MODEL))


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge app with its lifespan running, and an httpx client that talks to it in-process."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge", timeout=90.0) as http:
            yield http


@pytest_asyncio.fixture(scope="session")
async def api(bridge_settings: Settings, client: SdqueueClient) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process bridge for the session (the worker is ready: `client` waited for it)."""
    async with running_app(bridge_settings) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, username: str, *, password: str | None = None) -> dict[str, str]:
    """Authorization headers for a test user, from `POST /token`."""
    password = PASSWORDS[username] if password is None else password
    response = await http.post("/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest_asyncio.fixture(scope="session")
async def alice(api: httpx.AsyncClient) -> dict[str, str]:
    """alice's bearer header."""
    return await sign_in(api, "alice")


@pytest_asyncio.fixture(scope="session")
async def bob(api: httpx.AsyncClient) -> dict[str, str]:
    """bob's bearer header."""
    return await sign_in(api, "bob")


@dataclass(frozen=True)
class LiveBridge:
    """A `python -m sdqueue bridge` process and its base URL."""

    url: str
    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The bridge's process id."""
        return self.process.pid


@pytest.fixture(scope="session")
def live_bridge(
    bridge_settings: Settings, client: SdqueueClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveBridge]:
    """The bridge as a real HTTP server (uvicorn), for schemathesis and the browser."""
    log_path = tmp_path_factory.mktemp("bridge-process") / "bridge.log"
    with bridge_process(bridge_settings.model_copy(update={"limits": LIVE_LIMITS}), log_path=log_path) as live:
        yield live


@contextmanager
def bridge_process(settings: Settings, *, log_path: Path) -> Iterator[LiveBridge]:
    """`python -m sdqueue bridge` with these settings, ready; stopped on exit."""
    url = f"http://{settings.bridge.host}:{settings.bridge.port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sdqueue", "bridge"],
            env=worker_environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(url, process, log_path)
            yield LiveBridge(url=url, settings=settings, log_path=log_path, process=process)
        finally:
            stop_process(process, timeout_s=15.0)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + BRIDGE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the bridge exited {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the bridge never became ready:\n{log_path.read_text(errors='replace')}")
