"""Helpers for building requests: fresh job ids, the exact body bytes a request is sent (and signed) as, and the
message that carries them."""

from __future__ import annotations

import uuid

import aio_pika

from sdqueue.client.tokens import bearer
from sdqueue.contracts import GenerationRequest, utc_now
from sdqueue.contracts.topology import AUTHORIZATION_HEADER


def new_job_id() -> str:
    """A fresh, unguessable job id that matches the contract's pattern."""
    return uuid.uuid4().hex


def request_body(request: GenerationRequest) -> bytes:
    """The body `submit` sends for a request, so a token minted elsewhere can hash the same bytes.

    Only the fields the caller set are sent: the worker fills the rest from the served model's defaults.
    """
    return request.model_dump_json(exclude_unset=True).encode()


def request_message(body: bytes, *, job_id: str, token: str, reply_to: str | None = None) -> aio_pika.Message:
    """The persistent request message: the body, its job id and its token; events go to `reply_to` when set."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job_id,
        correlation_id=job_id if reply_to else None,
        reply_to=reply_to,
        timestamp=utc_now(),
        headers={AUTHORIZATION_HEADER: bearer(token)},
    )
