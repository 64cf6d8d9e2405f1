"""Helpers for building requests: fresh job ids, and the exact body bytes a request is sent (and signed) as."""

from __future__ import annotations

import uuid

from sdqueue.contracts import GenerationRequest


def new_job_id() -> str:
    """A fresh, unguessable job id that matches the contract's pattern."""
    return uuid.uuid4().hex


def request_body(request: GenerationRequest) -> bytes:
    """The body `submit` sends for a request, so a token minted elsewhere can hash the same bytes.

    Only the fields the caller set are sent: the worker fills the rest from the served model's defaults.
    """
    return request.model_dump_json(exclude_unset=True).encode()
