"""Verify a webhook on the receiving side: its HMAC-SHA256 signature, its timestamp window, then its event."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping

from pydantic import ValidationError

from sdqueue.contracts import TerminalEvent, parse_terminal_event
from sdqueue.contracts.errors import InvalidWebhook
from sdqueue.contracts.webhooks import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    SIGNATURE_VERSION,
    TIMESTAMP_HEADER,
    webhook_signature,
)


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> TerminalEvent:
    """Check a webhook's signature and timestamp (constant-time) and return its terminal event.

    `headers` may use any case. Dedupe on `Sdqueue-Event-Id`: delivery is at least once.

    Raises:
        InvalidWebhook: a header is missing, the timestamp is outside `tolerance_s` of `now`, no `v1` signature
            matches, or the body is not a terminal event.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp_text, signatures = lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower())
    if not timestamp_text or not signatures:
        raise InvalidWebhook(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not timestamp_text.isascii() or not timestamp_text.isdigit():
        raise InvalidWebhook(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise InvalidWebhook(f"{TIMESTAMP_HEADER} is more than {tolerance_s:g}s away from now (replayed or skewed)")
    expected = webhook_signature(body, secret=secret, timestamp=timestamp)
    # Several comma-separated signatures may be sent while a secret is rotated; one match is enough.
    offered = [part.strip() for part in signatures.split(",") if part.strip().startswith(f"{SIGNATURE_VERSION}=")]
    if not any(hmac.compare_digest(candidate.encode(), expected.encode()) for candidate in offered):
        raise InvalidWebhook("signature does not match")
    try:
        return parse_terminal_event(body)
    except ValidationError as exc:
        raise InvalidWebhook("the body is not a terminal event") from exc
