"""Fair intake: a caller holds only its share of a worker's main lane; its other jobs wait in the overflow lane.

RabbitMQ 3.10 has no priorities on quorum queues, so fairness is built from two queues per model: the main lane
that clients publish to, and an overflow lane (`sdqueue.overflow.<alias>`) that workers also consume. A job over
its caller's share is re-published to the overflow lane (confirmed) and only then acked, so it is never lost; the
batcher runs main-lane jobs before overflow ones. A light caller's jobs therefore overtake a heavy caller's flood.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError

from sdqueue.config import FairnessSettings
from sdqueue.contracts import Priority
from sdqueue.contracts.errors import SdqueueError
from sdqueue.contracts.topology import overflow_queue
from sdqueue.worker.consume import Delivery, Lane
from sdqueue.worker.settle import settle
from sdqueue.worker.verify import Caller, Claims, verify_token

if TYPE_CHECKING:
    from sdqueue.worker.services import Services

log = logging.getLogger(__name__)

# Batcher ranks: higher runs first.
RANK_HIGH, RANK_MAIN, RANK_OVERFLOW = 2, 1, 0


class FairIntake:
    """Counts the main-lane jobs each caller holds at this worker and says which of its new jobs must wait."""

    def __init__(self, fairness: FairnessSettings) -> None:
        self._fairness = fairness
        self._held: collections.Counter[Caller] = collections.Counter()

    def admit(self, caller: Caller, priority: Priority) -> bool:
        """Take the job into this worker now (True, counted until `release`) or send it to the overflow lane."""
        over_share = self._held[caller] >= self._fairness.max_per_caller
        if priority == "low" or (over_share and priority != "high"):
            return False
        self._held[caller] += 1
        return True

    def release(self, caller: Caller) -> None:
        """The caller's admitted job is settled; its share frees up."""
        self._held[caller] -= 1
        if self._held[caller] <= 0:
            del self._held[caller]

    def held(self, caller: Caller) -> int:
        """Main-lane jobs of this caller that the worker holds now."""
        return self._held[caller]


async def take_in(delivery: Delivery, *, services: Services) -> Callable[[], None] | None:
    """Admit a job (returning what to call once it is settled) or move it to the overflow lane (None).

    Overflow-lane jobs, and jobs whose token does not verify, are admitted uncounted (the pipeline reports a bad
    token as usual); with fairness off every job is admitted.
    """
    intake = services.intake
    if intake is None or delivery.lane != "main":
        return _nothing
    claims = _peek_claims(delivery, services=services)
    if claims is None:
        return _nothing
    if intake.admit(claims.caller, claims.quota.priority):
        return lambda: intake.release(claims.caller)
    timeout_s = services.settings.broker.publish_timeout_s
    if not await move_to_overflow(delivery, channel=services.channel, timeout_s=timeout_s):
        return _nothing
    services.metrics.overflowed.labels(model=delivery.alias).inc()
    log.debug("job %s: caller %s is over its share; moved to the overflow lane", delivery.message_id, claims.caller)
    await settle(delivery.message, "ack", job_id=delivery.message_id)
    return None


def _peek_claims(delivery: Delivery, *, services: Services) -> Claims | None:
    try:
        return verify_token(
            delivery.authorization,
            body=delivery.body,
            job_id=delivery.message_id or "",
            auth=services.settings.auth,
            keys=services.keys,
        )
    except SdqueueError:
        return None


def _nothing() -> None:
    return None


def batch_rank(lane: Lane, priority: Priority) -> int:
    """The batcher rank of a job: high-priority callers first, then the main lane, then the overflow lane."""
    if priority == "high":
        return RANK_HIGH
    if lane == "overflow" or priority == "low":
        return RANK_OVERFLOW
    return RANK_MAIN


async def move_to_overflow(delivery: Delivery, *, channel: AbstractChannel, timeout_s: float) -> bool:
    """Re-publish a main-lane request to its overflow lane, confirmed; False (job stays in hand) if that fails."""
    copy = delivery.copy()
    try:
        async with asyncio.timeout(timeout_s):
            await channel.default_exchange.publish(copy, routing_key=overflow_queue(delivery.alias))
    except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
        log.warning("job %s: could not move it to the overflow lane (%s); running it here", delivery.message_id, exc)
        return False
    return True
