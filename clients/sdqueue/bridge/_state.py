"""What the bridge holds while it runs: the database, one client, one event hub, the bucket and the metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from sdqueue.bridge._accounts import Accounts
from sdqueue.bridge._db import Database, DatabaseUnavailable, SchemaMismatch, database_url, open_database
from sdqueue.bridge._hub import HUB_QUEUE_PREFIX, EventHub
from sdqueue.bridge._jobstore import JobStore
from sdqueue.bridge._streams import StreamSlots
from sdqueue.client import SdqueueClient, UsageError
from sdqueue.config import Settings
from sdqueue.storage import make_s3_client

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


class BridgeConfigError(UsageError):
    """The settings lack what the bridge needs to start."""


@dataclass(frozen=True)
class Metrics:
    """The bridge's Prometheus metrics, in a registry of its own; with several processes, their files' directory."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    jobs: Counter
    streams: Gauge
    multiprocess_dir: Path | None = None

    def exposition(self) -> bytes:
        """The text `/metrics` answers: this process's metrics, or the sum over every process of the bridge."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


@dataclass(frozen=True)
class BridgeState:
    """Everything a route needs; built by the lifespan, closed at shutdown."""

    settings: Settings
    database: Database
    client: SdqueueClient
    hub: EventHub
    accounts: Accounts
    jobs: JobStore
    s3: S3Client
    metrics: Metrics
    streams: StreamSlots


def make_metrics(*, multiprocess_dir: Path | None = None) -> Metrics:
    """Fresh metrics in their own registry (several apps may live in one process).

    With `multiprocess_dir`, prometheus_client keeps the values in files there (it reads PROMETHEUS_MULTIPROC_DIR,
    which `run_bridge` sets for its processes, when it is imported), and `exposition` sums them.
    """
    registry = CollectorRegistry()
    return Metrics(
        multiprocess_dir=multiprocess_dir,
        registry=registry,
        requests=Counter(
            "sdqueue_bridge_requests", "HTTP requests answered.", ["method", "route", "status"], registry=registry
        ),
        latency=Histogram(
            "sdqueue_bridge_request_seconds", "Time to answer, headers sent.", ["method", "route"], registry=registry
        ),
        jobs=Counter("sdqueue_bridge_jobs_submitted", "Jobs published to the queue.", ["mode"], registry=registry),
        streams=Gauge(
            "sdqueue_bridge_event_streams",
            "Open Server-Sent Events streams.",
            registry=registry,
            multiprocess_mode="livesum",
        ),
    )


def check_settings(settings: Settings) -> None:
    """Raises BridgeConfigError when a secret the bridge needs is missing."""
    if settings.bridge.token_secret is None:
        raise BridgeConfigError("set SDQUEUE_BRIDGE__TOKEN_SECRET (at least 32 bytes) to sign access tokens")
    if settings.auth.hs256_secret is None:
        raise BridgeConfigError("set SDQUEUE_AUTH__HS256_SECRET: the bridge signs each request it publishes")


@asynccontextmanager
async def open_state(settings: Settings, *, metrics: Metrics) -> AsyncIterator[BridgeState]:
    """Open the database, connect the client and the event hub; close them on exit.

    Raises:
        BridgeConfigError, BrokerUnavailable: the bridge cannot start.
    """
    check_settings(settings)
    database = await open_checked_database(settings)
    accounts = Accounts(database, bridge=settings.bridge)
    hub = EventHub(cache_size=settings.bridge.progress_cache_size, broker=settings.broker)
    try:
        async with SdqueueClient(settings, subject="sdqueue-bridge") as client:
            await hub.start(queue_name=f"{HUB_QUEUE_PREFIX}{uuid.uuid4().hex}")
            try:
                yield BridgeState(
                    settings=settings,
                    database=database,
                    client=client,
                    hub=hub,
                    accounts=accounts,
                    jobs=JobStore(database),
                    s3=make_s3_client(settings.s3),
                    metrics=metrics,
                    streams=StreamSlots(per_user=settings.bridge.max_streams_per_user),
                )
            finally:
                await hub.close()
    finally:
        accounts.close()
        await database.close()


async def open_checked_database(settings: Settings) -> Database:
    """The bridge's database, at the schema this code knows.

    Raises:
        BridgeConfigError: the schema is another (or none): the message says to run `sdqueue bridge db upgrade`;
            or the database cannot be reached.
    """
    try:
        return await open_database(database_url(settings), timeout_s=settings.bridge.database_timeout_s)
    except (SchemaMismatch, DatabaseUnavailable) as exc:
        raise BridgeConfigError(str(exc)) from exc


async def check_database(settings: Settings) -> None:
    """Open and close the database once, so a bridge on the wrong schema stops before it serves.

    Raises:
        BridgeConfigError: as `open_checked_database`.
    """
    database = await open_checked_database(settings)
    await database.close()


def state_of(request: Request) -> BridgeState:
    """The running bridge's state."""
    state: BridgeState = request.app.state.bridge
    return state


async def get_state(request: Request) -> BridgeState:
    """The running bridge's state (FastAPI dependency; async so that FastAPI calls it inline, not in a thread)."""
    return state_of(request)
