"""The relay: consume `sdqueue.webhooks` on a channel of its own and deliver every task concurrently.

A task is acked once its receiver answers 2xx and rejected (dead-lettered to `sdqueue.dead`) when it is refused
or out of attempts; one still being retried at shutdown is requeued for the next relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import httpx
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from sdqueue.broker import connect
from sdqueue.config import Settings, WebhookSettings
from sdqueue.contracts.errors import Forbidden
from sdqueue.contracts.topology import WEBHOOKS_QUEUE, webhook_queue_arguments
from sdqueue.worker.logs import current_job_id
from sdqueue.worker.settle import settle
from sdqueue.worker.webhooks._deliver import OnOutcome, WebhookOutcome, deliver_webhook
from sdqueue.worker.webhooks._tasks import read_task, signing_secret, webhook_secret

log = logging.getLogger(__name__)


def _ignore(_: WebhookOutcome) -> None:
    return None


@contextlib.asynccontextmanager
async def running_relay(
    connection: AbstractRobustConnection, *, webhooks: WebhookSettings, on_outcome: OnOutcome = _ignore
) -> AsyncIterator[None]:
    """Run the worker's in-process relay for the block, when `webhooks.relay` is on and a secret is set."""
    if not webhooks.relay or webhooks.secret is None:
        yield
        return
    async with relaying(connection, webhooks=webhooks, on_outcome=on_outcome):
        yield


@contextlib.asynccontextmanager
async def relaying(
    connection: AbstractRobustConnection, *, webhooks: WebhookSettings, on_outcome: OnOutcome = _ignore
) -> AsyncIterator[None]:
    """Consume and deliver webhook tasks until the block exits, then requeue whatever is still being retried.

    Raises:
        Forbidden: no `webhooks.secret` is configured.
    """
    secret = webhook_secret(webhooks)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=webhooks.prefetch)
    queue = await channel.declare_queue(WEBHOOKS_QUEUE, durable=True, arguments=webhook_queue_arguments())
    in_flight: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=webhooks.prefetch, max_keepalive_connections=min(webhooks.prefetch, 20))
    # Redirects are not followed and proxies from the environment are not used: the checked address is the one called.
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, limits=limits) as http:

        async def on_message(message: AbstractIncomingMessage) -> None:
            delivery = relay_task(message, http=http, webhooks=webhooks, secret=secret, on_outcome=on_outcome)
            task = asyncio.create_task(delivery, name=f"webhook:{message.message_id}")
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        tag = await queue.consume(on_message, no_ack=False)
        log.info("webhook relay consuming %s", WEBHOOKS_QUEUE)
        try:
            yield
        finally:
            with contextlib.suppress(AMQPError, ConnectionError, RuntimeError):
                await queue.cancel(tag)
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            with contextlib.suppress(AMQPError, ConnectionError, RuntimeError):
                await channel.close()


async def relay_task(
    message: AbstractIncomingMessage,
    *,
    http: httpx.AsyncClient,
    webhooks: WebhookSettings,
    secret: str,
    on_outcome: OnOutcome,
) -> None:
    """Deliver one task and settle it: ack when delivered, reject (dead-letter) when refused or out of attempts."""
    job_id = message.correlation_id
    current_job_id.set(job_id)  # this task's own context: its log lines carry the job id
    try:
        outcome = await _deliver(message, http=http, webhooks=webhooks, secret=secret, on_outcome=on_outcome)
    except asyncio.CancelledError:
        await asyncio.shield(settle(message, "requeue", job_id=job_id))
        raise
    except Exception:  # the per-webhook guard: a bug must neither kill the relay nor strand the task unacked
        log.exception("job %s: webhook task %s failed unexpectedly; dead-lettering it", job_id, message.message_id)
        outcome = "dead_lettered"
    on_outcome(outcome)
    await settle(message, "ack" if outcome == "delivered" else "reject", job_id=job_id)


async def _deliver(
    message: AbstractIncomingMessage,
    *,
    http: httpx.AsyncClient,
    webhooks: WebhookSettings,
    secret: str,
    on_outcome: OnOutcome,
) -> WebhookOutcome:
    try:
        task = read_task(message, secret=secret)
        # Each attempt checks the URL against this relay's allow-list and the resolved address again.
        signing = signing_secret(webhooks, issuer=task.issuer)
        delivered = await deliver_webhook(task, secret=signing, http=http, webhooks=webhooks, on_outcome=on_outcome)
    except Forbidden as exc:
        log.warning(
            "job %s: webhook %s refused (%s); dead-lettering it",
            message.correlation_id,
            message.message_id,
            exc.message,
        )
        return "refused"
    if delivered:
        return "delivered"
    log.warning(
        "job %s: webhook %s undelivered after %d attempts; dead-lettering it",
        task.job_id,
        task.event_id,
        webhooks.max_attempts,
    )
    return "dead_lettered"


async def run_relay(settings: Settings) -> None:
    """Deliver webhooks until SIGTERM or SIGINT: `sdqueue webhooks relay`, for workers run with `webhooks.relay` off.

    Raises:
        Forbidden: no `webhooks.secret` is configured.
    """
    webhook_secret(settings.webhooks)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    connection = await connect(settings.broker)
    async with connection, relaying(connection, webhooks=settings.webhooks):
        log.info("webhook relay ready")
        await stopping.wait()
        log.info("webhook relay stopping; webhooks still being retried go back to the queue")
