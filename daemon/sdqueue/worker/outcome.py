"""A job's outcome made durable and visible: its result record in the bucket, then its event on the broker.

The record is written first (first writer wins), so an event lost to a crash is re-published on redelivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote, unquote

from sdqueue import storage
from sdqueue.contracts import JobEvent, TerminalEvent, parse_terminal_event
from sdqueue.contracts.errors import JobIdTaken, SdqueueError
from sdqueue.contracts.topology import record_key
from sdqueue.worker.consume import Delivery
from sdqueue.worker.context import JobContext
from sdqueue.worker.publish import publish_event
from sdqueue.worker.services import Services
from sdqueue.worker.verify import Caller
from sdqueue.worker.webhooks import enqueue_webhook

log = logging.getLogger(__name__)

OWNER_METADATA_KEY = "sub"
ISSUER_METADATA_KEY = "iss"
MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredRecord:
    """A job's result record as found in the bucket, with the caller that owns it."""

    event: TerminalEvent
    owner: Caller


async def load_record(job_id: str, *, services: Services) -> StoredRecord | None:
    """Read `jobs/<job_id>.json`, or None when the job has no record yet.

    Raises:
        StorageError: the bucket is unreachable.
    """
    s3 = services.settings.s3
    stored = await storage.durable(
        lambda: storage.read_object(services.s3, bucket=s3.bucket, key=record_key(job_id), max_bytes=MAX_RECORD_BYTES),
        job_id=job_id,
        budget_s=s3.outage_budget_s,
    )
    if stored is None:
        return None
    # Records written before owners carried their issuer belong to the default issuer.
    issuer = unquote(stored.metadata.get(ISSUER_METADATA_KEY, services.settings.auth.issuers[0]))
    owner = Caller(issuer, unquote(stored.metadata.get(OWNER_METADATA_KEY, "")))
    return StoredRecord(event=parse_terminal_event(stored.data), owner=owner)


async def republish_record(*, ctx: JobContext, delivery: Delivery, services: Services) -> bool:
    """If this job already has a result record, publish it again instead of generating twice.

    Raises:
        JobIdTaken: the job id belongs to another caller.
    """
    record = await load_record(ctx.job_id, services=services)
    if record is None:
        return False
    if record.owner != ctx.owner:
        raise JobIdTaken("this job id is already used by another caller")
    log.info("job %s already finished; re-publishing its record", ctx.job_id)
    await announce(record.event, ctx=ctx, delivery=delivery, services=services)
    return True


async def finish(event: TerminalEvent, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Store the result record once the caller is known (first writer wins), then publish the stored outcome."""
    if ctx.owner is not None:
        s3, owner = services.settings.s3, ctx.owner
        written = await storage.durable(
            lambda: storage.put_object_if_absent(
                services.s3,
                bucket=s3.bucket,
                key=record_key(ctx.job_id),
                data=event.model_dump_json().encode(),
                content_type="application/json",
                metadata={
                    ISSUER_METADATA_KEY: quote(owner.issuer, safe=""),
                    OWNER_METADATA_KEY: quote(owner.subject, safe=""),
                },
            ),
            job_id=ctx.job_id,
            budget_s=s3.outage_budget_s,
        )
        record = None if written else await load_record(ctx.job_id, services=services)
        if record is not None and record.owner == ctx.owner:
            event = record.event
    await announce(event, ctx=ctx, delivery=delivery, services=services)
    services.metrics.observe_outcome(event)


async def announce(event: TerminalEvent, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Publish a terminal event and, when the request named an allowed callback, queue its webhook; both confirmed."""
    await emit(event, delivery=delivery, services=services)
    if ctx.callback_url is not None and ctx.owner is not None:
        await enqueue_webhook(
            event,
            url=ctx.callback_url,
            issuer=ctx.owner.issuer,
            channel=services.channel,
            webhooks=services.settings.webhooks,
            timeout_s=services.settings.broker.publish_timeout_s,
        )


async def report_failure(error: SdqueueError, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Publish the failed event, stored as the job's record when the token was verified."""
    await finish(ctx.failed(error.to_info()), ctx=ctx, delivery=delivery, services=services)


async def emit(event: JobEvent, *, delivery: Delivery, services: Services) -> None:
    """Publish one event of this delivery's job, with confirm, also to the request's `reply_to`."""
    await publish_event(
        event,
        events=services.events,
        channel=services.channel,
        reply_to=delivery.reply_to,
        correlation_id=delivery.correlation_id,
        timeout_s=services.settings.broker.publish_timeout_s,
        user_id=services.settings.broker.user_name,
    )
