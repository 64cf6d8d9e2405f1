"""Signed webhooks: the headers of a callback POST and the HMAC-SHA256 that signs it, shared by sender and receiver.

The signature covers `<timestamp>.<body>`, so a receiver can refuse both a forged body and a replayed old one.
"""

from __future__ import annotations

import hashlib
import hmac

EVENT_ID_HEADER = "Sdqueue-Event-Id"
TIMESTAMP_HEADER = "Sdqueue-Timestamp"
SIGNATURE_HEADER = "Sdqueue-Signature"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300.0


def signed_payload(body: bytes, *, timestamp: int) -> bytes:
    """The bytes a `v1` signature covers: the decimal Unix timestamp, a dot, then the exact body."""
    return f"{timestamp}.".encode() + body


def webhook_signature(body: bytes, *, secret: str, timestamp: int) -> str:
    """The `Sdqueue-Signature` value: `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`."""
    digest = hmac.new(secret.encode(), signed_payload(body, timestamp=timestamp), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def webhook_event_id(body: bytes) -> str:
    """The `Sdqueue-Event-Id` of a body: the same terminal event always gets the same id, so receivers can dedupe."""
    return hashlib.sha256(body).hexdigest()[:32]
