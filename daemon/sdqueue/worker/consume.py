"""Declare the contract's topology on RabbitMQ and turn incoming messages into `Delivery` values."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from sdqueue.contracts import JOB_ID_PATTERN
from sdqueue.contracts.topology import (
    AUTHORIZATION_HEADER,
    CONTROL_EXCHANGE,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    DEATH_HEADER,
    DELIVERY_COUNT_HEADER,
    EVENTS_EXCHANGE,
    EXCHANGE_TYPES,
    REQUESTS_EXCHANGE,
    RETRIES_HEADER,
    WEBHOOKS_QUEUE,
    overflow_queue,
    request_queue_arguments,
    requests_queue,
    retry_queue,
    retry_queue_arguments,
    webhook_queue_arguments,
)
from sdqueue.worker.validate import job_id_from_body

_JOB_ID = re.compile(JOB_ID_PATTERN)

Lane = Literal["main", "overflow"]


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One request message as the later stages need it; `message` stays for the settle stage only.

    `job_id` is the message id, or for a message without a usable one the body's (for reporting); None if neither.
    """

    message: AbstractIncomingMessage
    alias: str
    body: bytes
    message_id: str | None
    job_id: str | None
    authorization: str | None
    reply_to: str | None
    correlation_id: str | None
    delivery_count: int
    published_at: datetime | None
    lane: Lane = "main"
    retries: int = 0

    @property
    def attempt(self) -> int:
        """1 for the first delivery, then one more per retry through the retry queue and per redelivery."""
        return self.retries + self.delivery_count + 1

    def copy(self, *, headers: Mapping[str, int] | None = None, expiration_s: float | None = None) -> aio_pika.Message:
        """A persistent copy of the request to re-publish (retry queue, overflow lane), plus `headers`.

        The broker's delivery count stays behind: the copy is a new message to the queue it lands in.
        """
        message = self.message
        kept = {key: value for key, value in (message.headers or {}).items() if key != DELIVERY_COUNT_HEADER}
        return aio_pika.Message(
            self.body,
            headers={**kept, **(headers or {})},
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            expiration=expiration_s,
        )


@dataclass(frozen=True)
class Topology:
    """The exchanges and queues a worker uses once they are declared."""

    events: AbstractExchange
    requests: dict[str, AbstractQueue]


async def declare_topology(channel: AbstractChannel, *, aliases: Iterable[str], delivery_limit: int) -> Topology:
    """Declare every exchange and queue of the contract, idempotently, and bind one request queue per alias."""
    requests, dead, events, _ = [
        await channel.declare_exchange(name, aio_pika.ExchangeType(EXCHANGE_TYPES[name]), durable=True)
        for name in (REQUESTS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, CONTROL_EXCHANGE)
    ]
    dead_queue = await channel.declare_queue(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dead_queue.bind(dead)
    # Declared even when this worker runs no relay, so its webhook tasks wait for a standalone one.
    await channel.declare_queue(WEBHOOKS_QUEUE, durable=True, arguments=webhook_queue_arguments())
    queues = {}
    for alias in aliases:
        queue = await channel.declare_queue(
            requests_queue(alias), durable=True, arguments=request_queue_arguments(delivery_limit)
        )
        await queue.bind(requests, routing_key=alias)
        queues[alias] = queue
        await channel.declare_queue(retry_queue(alias), durable=True, arguments=retry_queue_arguments(alias))
    return Topology(events=events, requests=queues)


async def declare_overflow(
    channel: AbstractChannel, *, aliases: Iterable[str], delivery_limit: int
) -> dict[str, AbstractQueue]:
    """Declare each alias's overflow lane on the channel that will consume it (reached by queue name only)."""
    return {
        alias: await channel.declare_queue(
            overflow_queue(alias), durable=True, arguments=request_queue_arguments(delivery_limit)
        )
        for alias in aliases
    }


async def consume_jobs(
    queue: AbstractQueue, *, alias: str, on_delivery: Callable[[Delivery], Awaitable[None]], lane: Lane = "main"
) -> str:
    """Start consuming one request queue (a main or overflow lane) with manual acks; returns the consumer tag."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        await on_delivery(to_delivery(message, alias=alias, lane=lane))

    return await queue.consume(on_message, no_ack=False)


def to_delivery(message: AbstractIncomingMessage, *, alias: str, lane: Lane = "main") -> Delivery:
    """Read what the pipeline needs from a raw message."""
    headers = message.headers or {}
    authorization = headers.get(AUTHORIZATION_HEADER)
    # Only the broker's count on a redelivery is trusted: a producer can put any header on a first delivery.
    count = headers.get(DELIVERY_COUNT_HEADER, 0) if message.redelivered else 0
    published_at = message.timestamp
    if published_at is not None and published_at.tzinfo is None:
        published_at = published_at.replace(tzinfo=UTC)
    message_id = message.message_id if message.message_id and _JOB_ID.match(message.message_id) else None
    return Delivery(
        message=message,
        alias=alias,
        body=message.body,
        message_id=message_id,
        job_id=message_id or job_id_from_body(message.body),
        authorization=authorization if isinstance(authorization, str) else None,
        reply_to=message.reply_to,
        correlation_id=message.correlation_id,
        delivery_count=max(count, 0) if isinstance(count, int) else 0,
        published_at=published_at,
        lane=lane,
        retries=retries_so_far(headers, alias=alias),
    )


def retries_so_far(headers: Mapping[str, object], *, alias: str) -> int:
    """How often this request came back from the retry queue: the broker's `x-death` count for it, or the worker's
    own header where the broker does not carry a re-published `x-death` forward (both are set by workers only,
    and a producer forging either only cuts its own job's retries short)."""
    deaths = headers.get(DEATH_HEADER)
    counts = [_expired_count(death, queue=retry_queue(alias)) for death in deaths] if isinstance(deaths, list) else []
    own = headers.get(RETRIES_HEADER)
    return max([0, own if isinstance(own, int) else 0, *counts])


def _expired_count(death: object, *, queue: str) -> int:
    if not isinstance(death, Mapping) or death.get("queue") != queue or death.get("reason") != "expired":
        return 0
    count = death.get("count")
    return count if isinstance(count, int) else 0
