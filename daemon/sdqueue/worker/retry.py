"""Re-publish a request copy instead of holding it: to its alias's retry queue after a backoff, or to its overflow lane.

A retry copy waits out its backoff in `sdqueue.retry.<alias>` (its per-message TTL) holding no delivery and no prefetch
slot; the broker then dead-letters it back to `sdqueue.requests` under the alias, as a fresh delivery whose `x-death`
counts the retries. An overflow copy waits in `sdqueue.overflow.<alias>` (see `fairness.py`).
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError

from sdqueue.config import BrokerSettings
from sdqueue.contracts.topology import RETRIES_HEADER, overflow_queue, retry_queue
from sdqueue.worker.consume import Delivery

log = logging.getLogger(__name__)

# Caps the doubling: a forged retry count must not overflow the backoff.
_MAX_DOUBLINGS = 16


def retry_backoff_s(retries: int, *, broker: BrokerSettings) -> float:
    """The wait before the next attempt: `retry_backoff_s`, doubled per retry so far, at most `max_retry_backoff_s`."""
    return float(min(broker.retry_backoff_s * 2 ** min(retries, _MAX_DOUBLINGS), broker.max_retry_backoff_s))


class BrokerRequeue:
    """Re-publishes request copies on the worker's confirmed channel; the job is acked only once a copy is confirmed."""

    def __init__(self, channel: AbstractChannel, *, broker: BrokerSettings) -> None:
        self._channel, self._timeout_s = channel, broker.publish_timeout_s

    async def retry_later(self, delivery: Delivery, *, backoff_s: float) -> bool:
        """Send a copy to the retry queue with `backoff_s` as its TTL; False when it was not confirmed."""
        copy = delivery.copy(headers={RETRIES_HEADER: delivery.retries + 1}, expiration_s=backoff_s)
        return await self._republish(copy, routing_key=retry_queue(delivery.alias), job_id=delivery.job_id)

    async def to_overflow(self, delivery: Delivery) -> bool:
        """Send a copy to the alias's overflow lane; False when it was not confirmed."""
        return await self._republish(
            delivery.copy(), routing_key=overflow_queue(delivery.alias), job_id=delivery.job_id
        )

    async def _republish(self, copy: aio_pika.Message, *, routing_key: str, job_id: str | None) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._channel.default_exchange.publish(copy, routing_key=routing_key)
        except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
            log.warning("job %s: could not re-publish it to %s (%s)", job_id, routing_key, exc)
            return False
        return True
