"""Every bad request from a verified caller ends as exactly one failed event with the contract's code, and its message
in sdqueue.dead; one nobody verifiable speaks for is dead-lettered without any event."""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika
import jwt
import pytest

from sdqueue.client import SdqueueClient, UnroutableRequest, bearer
from sdqueue.config import AuthSettings, Settings
from sdqueue.contracts import ErrorCode, FailedEvent
from tests.e2e.requests import claims, hs256, raw_message, signed_message, txt2img, unsigned_token
from tests.faults import expect_unreported
from tests.plugins.stack import BrokerProbe, EventLog, WorkerProcess

WRONG_SECRET = "another-secret-that-is-long-enough-for-hs256!"


async def _failed_event(log: EventLog, *, timeout_s: float = 15.0) -> FailedEvent:
    await log.wait_for("failed", timeout_s=timeout_s)
    failed = log.of_type("failed")
    assert len(failed) == 1, f"expected one failed event, saw {[e.type for e in log.events]}"
    assert isinstance(failed[0], FailedEvent)
    return failed[0]


async def _publish_and_expect(
    client: SdqueueClient, probe: BrokerProbe, *, job_id: str, message: object, code: ErrorCode
) -> FailedEvent:
    log = await probe.watch(job_id)
    await client.publish_raw(message, routing_key="default")  # type: ignore[arg-type]
    event = await _failed_event(log)
    assert await probe.dead_letter(job_id) is not None, "rejected request did not reach sdqueue.dead"
    await asyncio.sleep(0.2)  # anything published after the reject would show up here
    assert len(log.of_type("failed")) == 1
    assert not log.of_type("succeeded")
    assert event.error.code is code
    assert event.error.retryable is False
    return event


def _token_cases() -> dict[str, tuple[ErrorCode | None, object]]:
    """Each case's reported code; None where nobody verifiable speaks for the job, so nothing is reported."""
    return {
        "missing token": (None, None),
        "not a jwt": (None, "Bearer not-a-jwt"),
        "wrong key": (None, "wrong-key"),
        "alg none": (None, "alg-none"),
        "expired": (ErrorCode.TOKEN_EXPIRED, {"exp": int(time.time()) - 60, "iat": int(time.time()) - 120}),
        "wrong aud": (ErrorCode.INVALID_TOKEN, {"aud": "someone-else"}),
        "wrong iss": (None, {"iss": "mallory"}),
        "jti is another job": (None, {"jti": "another-job"}),
        "nbf in future": (ErrorCode.INVALID_TOKEN, {"nbf": int(time.time()) + 600}),
        "no scope": (ErrorCode.FORBIDDEN, {"scope": "sdqueue:cancel"}),
        "scope claim missing": (ErrorCode.INVALID_TOKEN, {"scope": None}),
    }


TOKEN_CASES = [
    "missing token",
    "not a jwt",
    "wrong key",
    "alg none",
    "expired",
    "wrong aud",
    "wrong iss",
    "jti is another job",
    "nbf in future",
    "no scope",
    "scope claim missing",
]


def _token_message(case: str, *, body: bytes, job_id: str, auth: AuthSettings) -> aio_pika.Message:
    spec = _token_cases()[case][1]
    if spec is None or (isinstance(spec, str) and spec.startswith("Bearer")):
        return raw_message(body, job_id=job_id, authorization=spec)
    if spec == "wrong-key":
        token = jwt.encode(claims(body, job_id=job_id, auth=auth), WRONG_SECRET, algorithm="HS256")
        return raw_message(body, job_id=job_id, authorization=bearer(token))
    if spec == "alg-none":
        token = unsigned_token(claims(body, job_id=job_id, auth=auth))
        return raw_message(body, job_id=job_id, authorization=bearer(token))
    assert isinstance(spec, dict)
    return signed_message(body, job_id=job_id, auth=auth, **spec)


@pytest.mark.parametrize("case", TOKEN_CASES)
async def test_bad_token_is_dead_lettered_and_reported_only_to_a_verified_caller(
    case: str, client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess, stack_settings: Settings
):
    request = txt2img()
    body = request.model_dump_json().encode()
    code = _token_cases()[case][0]
    message = _token_message(case, body=body, job_id=request.job_id, auth=stack_settings.auth)

    if code is None:
        await expect_unreported(message, job_id=request.job_id, client=client, probe=probe, worker=worker)
    else:
        await _publish_and_expect(client, probe, job_id=request.job_id, message=message, code=code)

    assert await client.read_record(request.job_id) is None, "an unverified caller must not write a record"


async def test_body_swapped_under_valid_token(client: SdqueueClient, probe: BrokerProbe, stack_settings: Settings):
    auth = stack_settings.auth
    request = txt2img()
    signed_body = request.model_dump_json().encode()
    swapped = txt2img(job_id=request.job_id, prompt="something else entirely").model_dump_json().encode()
    token = hs256(claims(signed_body, job_id=request.job_id, auth=auth), auth)

    await _publish_and_expect(
        client,
        probe,
        job_id=request.job_id,
        message=raw_message(swapped, job_id=request.job_id, authorization=bearer(token)),
        code=ErrorCode.BODY_MISMATCH,
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"surprise": "field"}, ErrorCode.INVALID_REQUEST),
        ({"width": 65}, ErrorCode.INVALID_REQUEST),
        ({"width": 1_000_000}, ErrorCode.LIMITS_EXCEEDED),
        ({"scheduler": "no_such_scheduler"}, ErrorCode.INVALID_REQUEST),
    ],
    ids=["unknown field", "width not multiple of 8", "width over pixel cap", "unknown scheduler"],
)
async def test_bad_request_is_reported_recorded_and_dead_lettered(
    change: dict[str, object], code: ErrorCode, client: SdqueueClient, probe: BrokerProbe, stack_settings: Settings
):
    request = txt2img()
    body = json.dumps({**request.model_dump(), **change}).encode()

    event = await _publish_and_expect(
        client,
        probe,
        job_id=request.job_id,
        message=signed_message(body, job_id=request.job_id, auth=stack_settings.auth),
        code=code,
    )

    assert await client.read_record(request.job_id) == event


async def test_unserved_model_is_refused_at_publish(client: SdqueueClient):
    with pytest.raises(UnroutableRequest, match="no-such-model"):
        await client.submit(txt2img(model="no-such-model"))


@pytest.mark.parametrize(
    ("quota", "code"),
    [
        ({"max_steps": 1}, ErrorCode.LIMITS_EXCEEDED),
        ({"max_pixels": 32 * 32}, ErrorCode.LIMITS_EXCEEDED),
        ({"models": ["another-model"]}, ErrorCode.FORBIDDEN),
        ({"priority": "urgent"}, ErrorCode.INVALID_TOKEN),
    ],
    ids=["steps over the caller's cap", "pixels over the caller's cap", "model not allowed", "malformed quota"],
)
async def test_the_callers_quota_is_enforced(
    quota: dict[str, object], code: ErrorCode, client: SdqueueClient, probe: BrokerProbe, stack_settings: Settings
):
    request = txt2img(steps=2)  # within the worker's own caps
    body = request.model_dump_json().encode()

    await _publish_and_expect(
        client,
        probe,
        job_id=request.job_id,
        message=signed_message(body, job_id=request.job_id, auth=stack_settings.auth, quota=quota),
        code=code,
    )
