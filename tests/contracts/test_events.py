"""Events and the result record: round trips, discrimination by type, timestamps, and the body hash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from sdqueue.contracts import (
    CancelledEvent,
    ErrorCode,
    ErrorInfo,
    FailedEvent,
    ImageInfo,
    JobEvent,
    ProgressEvent,
    StartedEvent,
    SucceededEvent,
    Timings,
    body_sha256,
    is_terminal,
    parse_event,
    parse_terminal_event,
)

AT = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "job_id": "job-1",
    "model": "default",
    "worker": "host-1",
    "attempt": 1,
    "at": AT,
    "metadata": {"k": "v"},
}
IMAGE = ImageInfo(
    index=0,
    key="outputs/job-1/0.png",
    url="http://127.0.0.1:8333/sdqueue/outputs/job-1/0.png",
    content_type="image/png",
    width=512,
    height=512,
    seed=42,
    sha256="0" * 64,
    size=1234,
)
CANCELLED = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled by its owner", retryable=False)
EVENTS: list[JobEvent] = [
    StartedEvent(**COMMON),
    ProgressEvent(**COMMON, step=3, steps=25),
    SucceededEvent(**COMMON, images=[IMAGE], timings=Timings(queued=0.1, generate=2.0, total=2.5), warnings=["w"]),
    FailedEvent(**COMMON, error=ErrorInfo(code=ErrorCode.STORAGE_ERROR, message="storage unavailable", retryable=True)),
    CancelledEvent(**COMMON, error=CANCELLED),
]
IDS = [event.type for event in EVENTS]


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_event_round_trips_through_json(event: JobEvent):
    assert parse_event(event.model_dump_json()) == event


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_parse_event_picks_the_class_by_type(event: JobEvent):
    parsed = parse_event(event.model_dump_json().encode())

    assert type(parsed) is type(event)
    assert json.loads(event.model_dump_json())["type"] == event.type


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_is_terminal(event: JobEvent):
    assert is_terminal(event) is (event.type in {"succeeded", "failed", "cancelled"})


@pytest.mark.parametrize("event", [e for e in EVENTS if is_terminal(e)], ids=["succeeded", "failed", "cancelled"])
def test_terminal_events_are_result_records(event: JobEvent):
    assert parse_terminal_event(event.model_dump_json()) == event


@pytest.mark.parametrize("event", [e for e in EVENTS if not is_terminal(e)], ids=["started", "progress"])
def test_non_terminal_events_are_not_result_records(event: JobEvent):
    with pytest.raises(ValidationError):
        parse_terminal_event(event.model_dump_json())


def test_at_is_rfc3339_utc_with_z():
    body = json.loads(StartedEvent(**COMMON).model_dump_json())

    assert body["at"] == "2025-03-01T12:30:15.250000Z"


def test_at_in_another_zone_is_converted_to_utc():
    local = AT.astimezone(timezone(timedelta(hours=2)))
    event = StartedEvent(**{**COMMON, "at": local})

    assert json.loads(event.model_dump_json())["at"] == "2025-03-01T12:30:15.250000Z"
    assert event.at == AT


def test_default_at_is_now_in_utc():
    event = StartedEvent(job_id="job-1", model="default", worker="w", attempt=1)

    assert event.at.utcoffset() == timedelta(0)
    assert event.model_dump_json().count('Z"') == 1


def test_naive_datetime_is_rejected():
    with pytest.raises(ValidationError) as caught:
        StartedEvent(**{**COMMON, "at": datetime(2025, 3, 1, 12, 30)})

    assert caught.value.errors()[0]["loc"] == ("at",)


def test_naive_timestamp_in_json_is_rejected():
    body = json.loads(StartedEvent(**COMMON).model_dump_json())
    body["at"] = "2025-03-01T12:30:15"

    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_unknown_field_is_rejected(event: JobEvent):
    body = json.loads(event.model_dump_json()) | {"extra": 1}

    with pytest.raises(ValidationError) as caught:
        parse_event(json.dumps(body))

    assert caught.value.errors()[0]["loc"][-1] == "extra"


def test_unknown_type_is_rejected():
    body = json.loads(StartedEvent(**COMMON).model_dump_json()) | {"type": "paused"}

    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


def test_failed_timings_default_to_null_phases():
    event = FailedEvent(**COMMON, error=CANCELLED)

    assert json.loads(event.model_dump_json())["timings"] == {
        "queued": None,
        "generate": None,
        "encode": None,
        "upload": None,
        "total": None,
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
        (b"abc", "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"),
    ],
    ids=["empty", "abc"],
)
def test_body_sha256_is_unpadded_base64url(body: bytes, expected: str):
    # Hand-computed from the FIPS 180-2 test vectors: SHA-256("") = e3b0c442…, SHA-256("abc") = ba7816bf….
    assert body_sha256(body) == expected


def test_body_sha256_uses_the_url_safe_alphabet():
    # Some of these digests contain bytes that standard base64 writes as "+" or "/"; the claim must not.
    digests = [body_sha256(bytes([i])) for i in range(64)]

    assert any("-" in d or "_" in d for d in digests)
    assert not any("+" in d or "/" in d for d in digests)
