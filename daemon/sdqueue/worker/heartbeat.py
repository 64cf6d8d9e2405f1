"""The worker's heartbeat on `sdqueue.events`: who is up, what it serves, what it holds loaded (`sdqueue models`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sized

import aio_pika
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import AMQPError

from sdqueue.config import Settings
from sdqueue.contracts import NamedAdapter, WorkerHeartbeat, heartbeat_routing_key
from sdqueue.worker.generate import resolve_device
from sdqueue.worker.models import ModelCache

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def heartbeats(
    settings: Settings,
    *,
    models: ModelCache,
    adapters: tuple[NamedAdapter, ...],
    events: AbstractExchange,
    in_flight: Sized,
    stopping: asyncio.Event,
) -> AsyncIterator[None]:
    """Send heartbeats while the block runs, and a last one (`draining`) when it ends."""

    def describe() -> WorkerHeartbeat:
        return WorkerHeartbeat(
            worker=settings.worker_name,
            state="draining" if stopping.is_set() else "ready",
            models=models.aliases,
            loaded=models.loaded,
            families={alias: family.name for alias, family in models.families.items()},
            schedulers=dict(models.scheduler_names),
            adapters=adapters,
            device=str(resolve_device(settings.runtime)),
            in_flight=len(in_flight),
            interval_s=settings.heartbeat_interval_s,
        )

    timeout_s, user_id = settings.broker.publish_timeout_s, settings.broker.user_name
    loop = asyncio.create_task(
        _send_every(settings.heartbeat_interval_s, events, describe, timeout_s=timeout_s, user_id=user_id)
    )
    try:
        yield
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await send_heartbeat(events, describe(), timeout_s=timeout_s, user_id=user_id)


async def _send_every(
    interval_s: float,
    events: AbstractExchange,
    describe: Callable[[], WorkerHeartbeat],
    *,
    timeout_s: float,
    user_id: str,
) -> None:
    while True:
        await send_heartbeat(events, describe(), timeout_s=timeout_s, user_id=user_id)
        await asyncio.sleep(interval_s)


async def send_heartbeat(
    events: AbstractExchange, heartbeat: WorkerHeartbeat, *, timeout_s: float, user_id: str
) -> None:
    """Publish one heartbeat as `user_id` (the worker's broker user), transient and expiring after three
    intervals; a lost one is only logged."""
    message = aio_pika.Message(
        heartbeat.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        message_id=uuid.uuid4().hex,
        type=heartbeat.type,
        timestamp=heartbeat.at,
        expiration=3 * heartbeat.interval_s,
        user_id=user_id,
    )
    try:
        async with asyncio.timeout(timeout_s):
            await events.publish(message, routing_key=heartbeat_routing_key(heartbeat.worker), mandatory=False)
    except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
        log.debug("heartbeat lost: %s", exc)
