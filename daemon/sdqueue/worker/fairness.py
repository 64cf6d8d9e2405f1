"""Fair intake: a caller holds only its share of a worker's main lane; its other jobs wait in the overflow lane.

RabbitMQ 3.10 has no priorities on quorum queues, so fairness is built from two queues per model: the main lane
that clients publish to, and an overflow lane (`sdqueue.overflow.<alias>`) that workers also consume. A job over
its caller's share is re-published to the overflow lane (confirmed) and only then acked, so it is never lost; the
batcher runs main-lane jobs before overflow ones. A light caller's jobs therefore overtake a heavy caller's flood.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from sdqueue.config import FairnessSettings
from sdqueue.contracts import Priority
from sdqueue.worker.consume import Delivery, Lane
from sdqueue.worker.ports import Requeue
from sdqueue.worker.settle import settle
from sdqueue.worker.verify import Caller, Verification

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


async def take_in(
    delivery: Delivery,
    verification: Verification,
    *,
    intake: FairIntake | None,
    requeue: Requeue,
    on_overflow: Callable[[], None],
) -> Callable[[], None] | None:
    """Admit a job (returning what to call once it is settled) or move it to the overflow lane (None).

    Overflow-lane jobs, and jobs whose token did not verify, are admitted uncounted (the job path reports a bad
    token as usual); with fairness off every job is admitted.
    """
    claims = verification.claims
    if intake is None or delivery.lane != "main" or claims is None:
        return _nothing
    if intake.admit(claims.caller, claims.quota.priority):
        return lambda: intake.release(claims.caller)
    if not await requeue.to_overflow(delivery):
        return _nothing  # not confirmed: the job runs here after all
    on_overflow()
    log.debug("job %s: caller %s is over its share; moved to the overflow lane", delivery.job_id, claims.caller)
    await settle(delivery.message, "ack", job_id=delivery.job_id)
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
