"""One subscription to `sdqueue.events` (`job.#`), fanned out to the requests that follow a job.

The latest progress (`started` or `progress`) per job is kept in a bounded cache: a cache of the event stream, not
job state. Terminal events are passed on to followers only as a cue to read the job's record; they are never cached.
Only events a worker's broker user sent (`broker.worker_users`, checked through `user_id`) are taken.
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

from sdqueue.broker import connect
from sdqueue.client import sent_by_worker
from sdqueue.config import BrokerSettings
from sdqueue.contracts import JobEvent, is_terminal, parse_event
from sdqueue.contracts.topology import EVENTS_EXCHANGE, EXCHANGE_TYPES

log = logging.getLogger(__name__)

ALL_JOBS = "job.#"
HUB_QUEUE_PREFIX = "sdqueue.bridge."


class EventHub:
    """Receives every job event once and hands it to each subscriber of that job."""

    def __init__(self, *, cache_size: int, broker: BrokerSettings) -> None:
        self._cache_size = cache_size
        self._broker = broker
        self._latest: OrderedDict[str, JobEvent] = OrderedDict()
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
        """The last progress event seen for a job, if it is still cached."""
        return self._latest.get(job_id)

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
        """Cache a progress event, and hand any event to the job's subscribers."""
        if not is_terminal(event):
            self._latest[event.job_id] = event
            self._latest.move_to_end(event.job_id)
            while len(self._latest) > self._cache_size:
                self._latest.popitem(last=False)
        for queue in self._subscribers.get(event.job_id, ()):
            queue.put_nowait(event)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not sent_by_worker(message, broker=self._broker):
            return
        try:
            event = parse_event(message.body)
        except ValidationError:
            log.warning("ignoring a message on %s that is not an sdqueue event", EVENTS_EXCHANGE)
            return
        self.dispatch(event)
