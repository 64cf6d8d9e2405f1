"""Turn a job's outcome into ack, reject or requeue: the only module that settles a delivery."""

from __future__ import annotations

import logging
from typing import Literal

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPError

log = logging.getLogger(__name__)

Settlement = Literal["ack", "reject", "requeue"]


async def settle(message: AbstractIncomingMessage, settlement: Settlement, *, job_id: str | None) -> None:
    """Ack a finished job, reject a dead one (it dead-letters to `sdqueue.dead`) or requeue a retryable one.

    A settle that fails because the channel is gone is only logged: the broker redelivers unacked messages.
    """
    try:
        if settlement == "ack":
            await message.ack()
        elif settlement == "reject":
            await message.reject(requeue=False)
        else:
            # reject, not nack: from RabbitMQ 4.3 only a reject raises a quorum queue's delivery count.
            await message.reject(requeue=True)
    except (AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("job %s: could not %s (%s); the broker will redeliver it", job_id, settlement, exc)
