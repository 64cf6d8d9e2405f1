"""Fault tests through the real worker: hostile bodies, inputs and tokens end as one event each, never a crash.

This module holds the observation helpers the fault test files share.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sdqueue.client import SdqueueClient
from sdqueue.contracts import ErrorCode, FailedEvent
from sdqueue.contracts.topology import DEAD_QUEUE
from tests.plugins.stack import BrokerProbe, EventLog, WorkerProcess

FAILED_TIMEOUT_S = 30.0
# Anything the worker published after its reject would arrive within this.
QUIET_AFTER_S = 0.3
MAX_ERROR_MESSAGE_CHARS = 1024


@dataclass(frozen=True)
class Rejection:
    """The one failed event of a rejected job, and everything the observer saw for it."""

    event: FailedEvent
    log: EventLog

    @property
    def types(self) -> list[str]:
        """Event types in arrival order."""
        return [event.type for event in self.log.events]


async def expect_rejection(
    message: aio_pika.Message,
    *,
    job_id: str,
    code: ErrorCode,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
) -> Rejection:
    """Publish `message` and return its single failed event, once the request is in `sdqueue.dead`."""
    log_offset = log_size(worker)
    log = await probe.watch(job_id)
    await client.publish_raw(message, routing_key="default")
    await log.wait_for("failed", timeout_s=FAILED_TIMEOUT_S)
    assert log.of_type("failed"), f"no failed event for {job_id}; worker log:\n{worker.log_tail()}"
    assert await probe.dead_letter(job_id) is not None, "rejected request did not reach sdqueue.dead"
    await asyncio.sleep(QUIET_AFTER_S)
    failed = log.of_type("failed")
    assert len(failed) == 1, f"expected one failed event, saw {[event.type for event in log.events]}"
    assert not log.of_type("succeeded")
    event = failed[0]
    assert isinstance(event, FailedEvent)
    assert event.job_id == job_id
    assert (event.error.code, event.error.retryable) == (code, False), event.error.message
    assert len(event.error.message) <= MAX_ERROR_MESSAGE_CHARS, "error message echoes the input"
    assert worker.process.poll() is None, f"worker died:\n{worker.log_tail()}"
    assert_no_traceback_since(worker, log_offset)
    return Rejection(event=event, log=log)


async def expect_unreported(
    message: aio_pika.Message,
    *,
    job_id: str,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
) -> EventLog:
    """Publish `message` (with a `reply_to` of the probe's) and check it reaches `sdqueue.dead` with no event on
    `job.<job_id>` and no reply; returns the job's event log, to look at later."""
    log_offset = log_size(worker)
    log = await probe.watch(job_id)
    reply_to, replies = await probe.replies()
    message.reply_to = reply_to
    await client.publish_raw(message, routing_key="default")
    assert await probe.dead_letter(job_id, timeout_s=FAILED_TIMEOUT_S) is not None, (
        f"request did not reach sdqueue.dead; worker log:\n{worker.log_tail()}"
    )
    await asyncio.sleep(QUIET_AFTER_S)
    assert log.events == [], f"an unattributable request got events: {[event.type for event in log.events]}"
    assert replies.events == [], "an unattributable request got a reply"
    assert worker.process.poll() is None, f"worker died:\n{worker.log_tail()}"
    assert_no_traceback_since(worker, log_offset)
    return log


def log_size(worker: WorkerProcess) -> int:
    """How far the worker's log has been written so far."""
    return worker.log_path.stat().st_size


def assert_no_traceback_since(worker: WorkerProcess, offset: int) -> None:
    """Fail if the worker logged a traceback since `offset`: something got past every stage into the job guard."""
    with worker.log_path.open("rb") as log_file:
        log_file.seek(offset)
        written = log_file.read().decode(errors="replace")
    assert "Traceback" not in written, f"the worker's last-resort guard caught something:\n{written[-4000:]}"


async def dead_letter_by_correlation_id(
    connection: AbstractRobustConnection, correlation_id: str, *, timeout_s: float = 10.0
) -> AbstractIncomingMessage | None:
    """Take the message with this `correlation_id` out of `sdqueue.dead`, leaving every other message there.

    Others are held unacked on a private channel and go back to the queue when it closes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with await connection.channel() as channel:
        queue = await channel.get_queue(DEAD_QUEUE, ensure=False)
        while loop.time() < deadline:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
            elif message.correlation_id == correlation_id:
                await message.ack()
                return message
    return None
