"""Send a transient failure to its alias's retry queue instead of sleeping on it.

The copy waits out its backoff there (its per-message TTL) holding no delivery and no prefetch slot; the broker then
dead-letters it back to `sdqueue.requests` under the alias, as a fresh delivery whose `x-death` counts the retries.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError

from sdqueue.config import BrokerSettings
from sdqueue.contracts.topology import RETRIES_HEADER, retry_queue
from sdqueue.worker.consume import Delivery

log = logging.getLogger(__name__)

# Caps the doubling: a forged retry count must not overflow the backoff.
_MAX_DOUBLINGS = 16


def retry_backoff_s(retries: int, *, broker: BrokerSettings) -> float:
    """The wait before the next attempt: `retry_backoff_s`, doubled per retry so far, at most `max_retry_backoff_s`."""
    return float(min(broker.retry_backoff_s * 2 ** min(retries, _MAX_DOUBLINGS), broker.max_retry_backoff_s))


async def schedule_retry(delivery: Delivery, *, backoff_s: float, channel: AbstractChannel, timeout_s: float) -> bool:
    """Publish a copy of the request to its retry queue with `backoff_s` as its TTL and wait for the confirm.

    Returns False (the caller then requeues the delivery) when the copy was not confirmed in time.
    """
    copy = delivery.copy(headers={RETRIES_HEADER: delivery.retries + 1}, expiration_s=backoff_s)
    try:
        async with asyncio.timeout(timeout_s):
            await channel.default_exchange.publish(copy, routing_key=retry_queue(delivery.alias))
    except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
        log.warning("job %s: could not send it to the retry queue (%s); requeueing", delivery.message_id, exc)
        return False
    return True
