"""A job's outcome made durable and visible: its result record in the store, then its event and webhook.

The record is written first (first writer wins), so an event lost to a crash is re-published on redelivery.
"""

from __future__ import annotations

import logging

from sdqueue.contracts import JobEvent, TerminalEvent
from sdqueue.contracts.errors import JobIdTaken
from sdqueue.worker.consume import Delivery
from sdqueue.worker.context import JobContext
from sdqueue.worker.metrics import WorkerMetrics
from sdqueue.worker.ports import EventSink, RecordStore, WebhookQueue

log = logging.getLogger(__name__)


class Outcomes:
    """Publishes a job's events and makes its terminal outcome durable before it is announced."""

    def __init__(
        self, *, records: RecordStore, events: EventSink, webhooks: WebhookQueue, metrics: WorkerMetrics
    ) -> None:
        self.records = records
        self._events, self._webhooks, self._metrics = events, webhooks, metrics

    async def publish(self, event: JobEvent, *, delivery: Delivery) -> None:
        """Publish one event of the delivery's job, confirmed, also to the request's `reply_to`.

        Raises:
            PublishFailed: the broker did not confirm it.
        """
        await self._events.publish(event, reply_to=delivery.reply_to, correlation_id=delivery.correlation_id)

    async def record_and_publish(self, event: TerminalEvent, *, ctx: JobContext, delivery: Delivery) -> None:
        """Store the result record once the caller is known (first writer wins), then publish the stored outcome."""
        if ctx.owner is not None and not await self.records.write_once(ctx.job_id, event, owner=ctx.owner):
            stored = await self.records.read(ctx.job_id)
            if stored is not None and stored.owner == ctx.owner:
                event = stored.event
        await self._announce(event, ctx=ctx, delivery=delivery)
        self._metrics.observe_outcome(event)

    async def replay_record(self, *, ctx: JobContext, delivery: Delivery) -> bool:
        """If the job already has a result record, publish it again instead of generating twice.

        Raises:
            JobIdTaken: the record belongs to another caller.
        """
        stored = await self.records.read(ctx.job_id)
        if stored is None:
            return False
        if stored.owner != ctx.owner:
            raise JobIdTaken("this job id is already used by another caller")
        log.info("job %s already finished; re-publishing its record", ctx.job_id)
        await self._announce(stored.event, ctx=ctx, delivery=delivery)
        return True

    async def _announce(self, event: TerminalEvent, *, ctx: JobContext, delivery: Delivery) -> None:
        """Publish a terminal event and, when the request named an allowed callback, queue its webhook."""
        await self.publish(event, delivery=delivery)
        if ctx.callback_url is not None and ctx.owner is not None:
            await self._webhooks.enqueue(event, url=ctx.callback_url, issuer=ctx.owner.issuer)
