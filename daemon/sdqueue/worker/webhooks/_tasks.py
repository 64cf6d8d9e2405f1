"""Webhook tasks on `sdqueue.webhooks`: queued by the worker before it acks a job, consumed by the relay.

A task is the terminal event's exact JSON, with the callback URL and an HMAC of both in its headers: anyone may
publish to the broker, but only a holder of the webhook secret can queue a webhook the relay will sign and send.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError
from pamqp.commands import Basic

from sdqueue.config import WebhookSettings
from sdqueue.contracts import TerminalEvent
from sdqueue.contracts.errors import Forbidden
from sdqueue.contracts.topology import CALLBACK_URL_HEADER, TASK_ISSUER_HEADER, TASK_SIGNATURE_HEADER, WEBHOOKS_QUEUE
from sdqueue.contracts.webhooks import webhook_event_id
from sdqueue.worker.publish import PublishFailed

TASK_MESSAGE_TYPE = "webhook"


@dataclass(frozen=True)
class WebhookTask:
    """One webhook to deliver: the exact body to sign and send, where to, whose job it is (the issuer picks the
    signing secret), and its ids for dedupe and logs."""

    body: bytes
    url: str
    event_id: str
    job_id: str | None
    issuer: str = ""


def task_signature(body: bytes, *, url: str, issuer: str, secret: str) -> str:
    """Hex HMAC-SHA256 over a task's URL, issuer and body (domain-separated from the webhook's own signature)."""
    signed = b"task\n" + url.encode() + b"\n" + issuer.encode() + b"\n" + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signing_secret(webhooks: WebhookSettings, *, issuer: str) -> str:
    """The secret that signs webhooks of `issuer`'s callers: its own when configured, else the global one.

    Raises:
        Forbidden: neither is configured.
    """
    own = webhooks.issuer_secrets.get(issuer)
    return own.get_secret_value() if own is not None else webhook_secret(webhooks)


def webhook_secret(webhooks: WebhookSettings) -> str:
    """The signing secret.

    Raises:
        Forbidden: no secret is configured, so callbacks are off.
    """
    if webhooks.secret is None:
        raise Forbidden("callbacks are not enabled on this worker")
    return webhooks.secret.get_secret_value()


class BrokerWebhooks:
    """The job path's webhook queue: tasks on `sdqueue.webhooks` over the worker's confirmed channel."""

    def __init__(self, channel: AbstractChannel, *, webhooks: WebhookSettings, timeout_s: float) -> None:
        self._channel, self._webhooks, self._timeout_s = channel, webhooks, timeout_s

    async def enqueue(self, event: TerminalEvent, *, url: str, issuer: str) -> None:
        """Queue the event's webhook, confirmed (see `enqueue_webhook`)."""
        await enqueue_webhook(
            event, url=url, issuer=issuer, channel=self._channel, webhooks=self._webhooks, timeout_s=self._timeout_s
        )


async def enqueue_webhook(
    event: TerminalEvent,
    *,
    url: str,
    issuer: str,
    channel: AbstractChannel,
    webhooks: WebhookSettings,
    timeout_s: float,
) -> None:
    """Queue the webhook of a terminal event on `sdqueue.webhooks` and wait for the broker's confirm.

    Raises:
        PublishFailed: no confirm within `timeout_s`, the channel is closed, or the queue does not exist.
    """
    body = event.model_dump_json().encode()
    message = aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=webhook_event_id(body),
        correlation_id=event.job_id,
        type=TASK_MESSAGE_TYPE,
        headers={
            CALLBACK_URL_HEADER: url,
            TASK_ISSUER_HEADER: issuer,
            TASK_SIGNATURE_HEADER: task_signature(body, url=url, issuer=issuer, secret=webhook_secret(webhooks)),
        },
    )
    try:
        async with asyncio.timeout(timeout_s):
            confirmation = await channel.default_exchange.publish(message, routing_key=WEBHOOKS_QUEUE)
    except (AMQPError, TimeoutError, ConnectionError, RuntimeError) as exc:
        raise PublishFailed(f"webhook for job {event.job_id} was not confirmed") from exc
    if not isinstance(confirmation, Basic.Ack):
        raise PublishFailed(f"webhook for job {event.job_id} was returned: is {WEBHOOKS_QUEUE} declared?")


def read_task(message: AbstractIncomingMessage, *, secret: str) -> WebhookTask:
    """The webhook a task message asks for, once its HMAC holds.

    Raises:
        Forbidden: the URL or signature header is missing, or the signature does not match.
    """
    headers = message.headers or {}
    url, signature = headers.get(CALLBACK_URL_HEADER), headers.get(TASK_SIGNATURE_HEADER)
    issuer = headers.get(TASK_ISSUER_HEADER)
    if not isinstance(url, str) or not isinstance(signature, str) or not isinstance(issuer, str):
        raise Forbidden("webhook task without a callback URL, issuer or signature")
    expected = task_signature(message.body, url=url, issuer=issuer, secret=secret)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise Forbidden("webhook task signature does not match")
    return WebhookTask(
        body=message.body,
        url=url,
        # From the signed body, not from `message_id`, which the HMAC does not cover.
        event_id=webhook_event_id(message.body),
        job_id=message.correlation_id,
        issuer=issuer,
    )
