"""One subscription to `sdqueue.events` (`job.#` and the workers' heartbeats), fanned out to the requests that
follow a job, and the fleet view that `GET /v1/models` reads.

The latest progress (`started` or `progress`) per job is kept in a bounded cache: a cache of the event stream, not
job state. Previews are cached apart, under a byte cap, and only until the job ends. Terminal events are passed on
to followers only as a cue to read the job's record; they are never cached. Only messages a worker's broker user
sent (`broker.worker_users`, checked through `user_id`) are taken, heartbeats included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pydantic import ValidationError

from sdqueue.bridge._fleet import FleetView
from sdqueue.broker import connect
from sdqueue.client import sent_by_worker
from sdqueue.config import BrokerSettings
from sdqueue.contracts import (
    HEARTBEAT_PATTERN,
    JobEvent,
    PreviewImage,
    ProgressEvent,
    WorkerHeartbeat,
    is_terminal,
    parse_event,
)
from sdqueue.contracts.topology import EVENTS_EXCHANGE, EXCHANGE_TYPES

log = logging.getLogger(__name__)

ALL_JOBS = "job.#"
HUB_QUEUE_PREFIX = "sdqueue.bridge."
HEARTBEAT_KEY_PREFIX = HEARTBEAT_PATTERN.removesuffix("#")
# Previews of running jobs, at most this many base64 bytes in all (one is a few KiB): a follower that joins late sees
# the latest one at once, and ten thousand cached jobs cannot hold a preview each.
PREVIEW_CACHE_BYTES = 8 * 1024 * 1024


class EventHub:
    """Receives every job event once and hands it to each subscriber of that job."""

    def __init__(self, *, cache_size: int, broker: BrokerSettings) -> None:
        self._cache_size = cache_size
        self._broker = broker
        self._latest: OrderedDict[str, JobEvent] = OrderedDict()
        self._previews: OrderedDict[str, PreviewImage] = OrderedDict()
        self._preview_bytes = 0
        self.fleet = FleetView()
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._connection: AbstractRobustConnection | None = None

    async def start(self, *, queue_name: str) -> None:
        """Connect and bind a private queue to every job's events.

        Raises:
            BrokerUnavailable: the broker could not be reached in time.
        """

        async def subscribe(connection: AbstractRobustConnection) -> None:
            channel = await connection.channel()
            exchange_type = aio_pika.ExchangeType(EXCHANGE_TYPES[EVENTS_EXCHANGE])
            exchange = await channel.declare_exchange(EVENTS_EXCHANGE, exchange_type, durable=True)
            queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key=ALL_JOBS)
            await queue.bind(exchange, routing_key=HEARTBEAT_PATTERN)
            await queue.consume(self._on_message, no_ack=True)

        self._connection = await connect(self._broker, prepare=subscribe)

    async def close(self) -> None:
        """Close the subscription's connection."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def is_connected(self) -> bool:
        """Whether the subscription's connection is open."""
        return self._connection is not None and not self._connection.is_closed

    def latest(self, job_id: str) -> JobEvent | None:
        """The last progress event seen for a job, if it is still cached, with the job's latest preview if any."""
        event = self._latest.get(job_id)
        preview = self._previews.get(job_id)
        if isinstance(event, ProgressEvent) and event.preview is None and preview is not None:
            return event.model_copy(update={"preview": preview})
        return event

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[JobEvent]]:
        """A queue that receives the job's events while the context is open."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(job_id, set())
            subscribers.discard(queue)
            if not subscribers:
                self._subscribers.pop(job_id, None)

    def dispatch(self, event: JobEvent) -> None:
        """Cache a progress event (its preview apart), and hand any event, preview and all, to the job's subscribers."""
        if is_terminal(event):
            self._forget_preview(event.job_id)
        else:
            self._cache_progress(event)
        for queue in self._subscribers.get(event.job_id, ()):
            queue.put_nowait(event)

    def _cache_progress(self, event: JobEvent) -> None:
        if isinstance(event, ProgressEvent) and event.preview is not None:
            self._cache_preview(event.job_id, event.preview)
            event = event.model_copy(update={"preview": None})
        self._latest[event.job_id] = event
        self._latest.move_to_end(event.job_id)
        while len(self._latest) > self._cache_size:
            job_id, _ = self._latest.popitem(last=False)
            self._forget_preview(job_id)

    def _cache_preview(self, job_id: str, preview: PreviewImage) -> None:
        self._forget_preview(job_id)
        self._previews[job_id] = preview
        self._preview_bytes += len(preview.data)
        while self._preview_bytes > PREVIEW_CACHE_BYTES:
            self._forget_preview(next(iter(self._previews)))

    def _forget_preview(self, job_id: str) -> None:
        preview = self._previews.pop(job_id, None)
        if preview is not None:
            self._preview_bytes -= len(preview.data)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not sent_by_worker(message, broker=self._broker):
            return
        try:
            if (message.routing_key or "").startswith(HEARTBEAT_KEY_PREFIX):
                self.fleet.note(WorkerHeartbeat.model_validate_json(message.body))
            else:
                self.dispatch(parse_event(message.body))
        except ValidationError:
            log.warning("ignoring a message on %s that is not an sdqueue event or heartbeat", EVENTS_EXCHANGE)
