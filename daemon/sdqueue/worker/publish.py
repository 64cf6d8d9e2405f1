"""Publish job events to `sdqueue.events` (and the request's `reply_to`) and wait for the broker's confirm."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aio_pika.exceptions import AMQPError

from sdqueue.config import BrokerSettings
from sdqueue.contracts import JobEvent
from sdqueue.contracts.topology import event_routing_key


class PublishFailed(RuntimeError):
    """The broker did not confirm an event. The job cannot be settled either, so it will be redelivered."""


class BrokerEvents:
    """The job path's event sink: `sdqueue.events` plus `reply_to`, confirmed, as the worker's broker user."""

    def __init__(self, *, events: AbstractExchange, channel: AbstractChannel, broker: BrokerSettings) -> None:
        self._events, self._channel, self._broker = events, channel, broker

    async def publish(self, event: JobEvent, *, reply_to: str | None, correlation_id: str | None) -> None:
        """Publish one event and wait for its confirm.

        Raises:
            PublishFailed: no confirm within `publish_timeout_s`, or the channel is closed.
        """
        await publish_event(
            event,
            events=self._events,
            channel=self._channel,
            reply_to=reply_to,
            correlation_id=correlation_id,
            timeout_s=self._broker.publish_timeout_s,
            user_id=self._broker.user_name,
        )


async def publish_event(
    event: JobEvent,
    *,
    events: AbstractExchange,
    channel: AbstractChannel,
    reply_to: str | None,
    correlation_id: str | None,
    timeout_s: float,
    user_id: str,
) -> None:
    """Publish one event persistently and wait for its confirm; copy it to `reply_to` when the request asked.

    Both carry `user_id`, the worker's own broker user: the broker refuses any other, so a consumer that checks it
    knows a worker sent the event.

    Raises:
        PublishFailed: no confirm within `timeout_s`, or the channel is closed.
    """
    body = event.model_dump_json().encode()
    try:
        async with asyncio.timeout(timeout_s):
            await events.publish(
                _message(body, event, correlation_id, user_id=user_id),
                routing_key=event_routing_key(event.job_id, event.type),
            )
            if reply_to:
                await channel.default_exchange.publish(
                    _message(body, event, correlation_id, user_id=user_id), routing_key=reply_to
                )
    except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
        raise PublishFailed(f"event {event.type} for job {event.job_id} was not confirmed") from exc


def _message(body: bytes, event: JobEvent, correlation_id: str | None, *, user_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        correlation_id=correlation_id or event.job_id,
        type=event.type,
        timestamp=event.at,
        user_id=user_id,
    )
