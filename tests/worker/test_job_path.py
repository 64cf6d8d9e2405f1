"""The job path driven with in-memory collaborators: every outcome a delivery can have, without broker or bucket.

The same behaviours run on real parts in tests/e2e (round trip, rejections, img2img keys) and tests/faults
(tokens, tenants, outages, retries); these pin the job path's own decisions quickly.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import SecretStr

from sdqueue.client import new_job_id
from sdqueue.client.tokens import mint_token
from sdqueue.config import AuthSettings, Settings
from sdqueue.contracts import ErrorCode, FailedEvent, GenerationRequest, SucceededEvent
from sdqueue.contracts.topology import output_key
from sdqueue.worker.consume import Delivery, Lane
from sdqueue.worker.control import JobRegistry
from sdqueue.worker.fairness import FairIntake, take_in
from sdqueue.worker.metrics import WorkerMetrics
from sdqueue.worker.outcome import Outcomes
from sdqueue.worker.pipeline import JobPath
from sdqueue.worker.ports import StoredRecord
from sdqueue.worker.verify import Caller, Verification, load_keys, verify_request
from tests.worker.memory import (
    MemoryObjects,
    MemoryRecords,
    RecordingEvents,
    RecordingRequeue,
    RecordingWebhooks,
    SettledMessage,
    SolidGenerator,
)

SECRET = "job-path-unit-test-secret-of-32-bytes!!"
OTHER_SECRET = "a-different-secret-nobody-trusts-here!!"
ALICE = Caller("sdqueue", "alice")


class Harness:
    """A JobPath wired to in-memory collaborators, plus helpers to build signed deliveries."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(auth=AuthSettings(hs256_secret=SecretStr(SECRET)), **settings)
        self.records, self.objects = MemoryRecords(), MemoryObjects()
        self.events, self.requeue, self.webhooks = RecordingEvents(), RecordingRequeue(), RecordingWebhooks()
        self.generator = SolidGenerator()
        self.metrics = WorkerMetrics()
        self.path = JobPath(
            settings=self.settings,
            outcomes=Outcomes(records=self.records, events=self.events, webhooks=self.webhooks, metrics=self.metrics),
            objects=self.objects,
            requeue=self.requeue,
            generators={"default": self.generator},
            registry=JobRegistry(),
            metrics=self.metrics,
            stop_generation=threading.Event(),
        )

    def delivery(
        self,
        *,
        subject: str = "alice",
        secret: str = SECRET,
        ttl_s: float | None = None,
        delivery_count: int = 0,
        lane: Lane = "main",
        **fields: Any,
    ) -> tuple[Delivery, Verification]:
        """A signed txt2img delivery of a fresh job, and what intake's verification makes of it."""
        job_id = fields.pop("job_id", None) or new_job_id()
        request = GenerationRequest.model_validate(
            {
                "schema_version": 1,
                "job_id": job_id,
                "mode": "txt2img",
                "prompt": "a red square",
                "width": 64,
                "height": 64,
                "steps": 3,
            }
            | {"seed": 7}
            | fields
        )
        body = request.model_dump_json().encode()
        signing = AuthSettings(hs256_secret=SecretStr(secret))
        token = mint_token(body, job_id=job_id, subject=subject, auth=signing, ttl_s=ttl_s)
        delivery = Delivery(
            message=cast(Any, SettledMessage()),
            alias="default",
            body=body,
            message_id=job_id,
            job_id=job_id,
            authorization=f"Bearer {token}",
            reply_to=None,
            correlation_id=None,
            delivery_count=delivery_count,
            published_at=datetime.now(UTC),
            lane=lane,
        )
        verification = verify_request(
            delivery.authorization,
            body=body,
            job_id=job_id,
            auth=self.settings.auth,
            keys=load_keys(self.settings.auth),
        )
        return delivery, verification

    def failure_codes(self) -> list[ErrorCode]:
        return [event.error.code for event in self.events.published if isinstance(event, FailedEvent)]


async def test_a_verified_job_is_generated_uploaded_recorded_then_announced():
    harness = Harness()
    delivery, verification = harness.delivery()

    assert await harness.path.settle_as(delivery, verification) == "ack"

    assert harness.events.types[0] == "started"
    assert harness.events.types[-1] == "succeeded"
    assert "progress" in harness.events.types
    succeeded = harness.events.published[-1]
    assert isinstance(succeeded, SucceededEvent)
    key = output_key(str(delivery.job_id), 0, "png")
    assert [image.key for image in succeeded.images] == [key]
    assert succeeded.images[0].url == f"memory://{key}"
    assert harness.objects.objects[key].startswith(b"\x89PNG")
    stored = harness.records.records[str(delivery.job_id)]
    assert stored.owner == ALICE
    assert stored.event == succeeded


async def test_a_token_no_trusted_key_signed_is_dead_lettered_unreported():
    harness = Harness()
    delivery, verification = harness.delivery(secret=OTHER_SECRET)

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.events.published == []
    assert harness.records.records == {}
    assert harness.records.claims == {}
    assert harness.generator.calls == []


async def test_an_expired_token_is_reported_to_its_verified_caller_but_not_recorded():
    harness = Harness()
    delivery, verification = harness.delivery(ttl_s=-120)

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.TOKEN_EXPIRED]
    # Only claims that hold make an owner; a record would let an expired token take the job id.
    assert harness.records.records == {}
    assert harness.generator.calls == []


async def test_a_job_id_another_caller_claimed_is_neither_run_nor_reported():
    harness = Harness()
    delivery, verification = harness.delivery()
    harness.records.claims[str(delivery.job_id)] = Caller("sdqueue", "mallory")

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.events.published == []
    assert harness.generator.calls == []


async def test_a_redelivered_finished_job_republishes_its_record_without_generating():
    harness = Harness()
    delivery, verification = harness.delivery()
    await harness.path.settle_as(delivery, verification)
    first = harness.events.published[-1]
    harness.events.published.clear()
    harness.generator.calls.clear()

    assert await harness.path.settle_as(delivery, verification) == "ack"

    assert harness.events.published == [first]
    assert harness.generator.calls == []


async def test_a_storage_outage_sends_the_job_to_the_retry_queue():
    harness = Harness()
    harness.records.outage = True
    delivery, verification = harness.delivery()

    assert await harness.path.settle_as(delivery, verification) == "ack"

    assert harness.requeue.retries == [harness.settings.broker.retry_backoff_s]
    assert harness.events.published == []


async def test_an_unconfirmed_retry_copy_requeues_the_delivery():
    harness = Harness()
    harness.records.outage = True
    harness.requeue.confirm = False
    delivery, verification = harness.delivery()

    assert await harness.path.settle_as(delivery, verification) == "requeue"


async def test_a_retryable_failure_on_the_last_delivery_ends_as_delivery_limit_exceeded():
    harness = Harness()
    delivery, verification = harness.delivery(delivery_count=harness.settings.broker.delivery_limit)
    harness.generator.error = RuntimeError("a bug in the model code")

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.DELIVERY_LIMIT_EXCEEDED]
    assert harness.requeue.retries == []


async def test_an_unexpected_error_is_retried_not_lost():
    harness = Harness()
    delivery, verification = harness.delivery()
    harness.generator.error = RuntimeError("a bug in the model code")

    assert await harness.path.settle_as(delivery, verification) == "ack"

    assert len(harness.requeue.retries) == 1
    assert "failed" not in harness.events.types


async def test_an_unconfirmed_terminal_event_requeues_the_delivery_after_recording():
    harness = Harness()
    harness.events.fail_on = frozenset({"succeeded"})
    delivery, verification = harness.delivery()

    assert await harness.path.settle_as(delivery, verification) == "requeue"

    assert str(delivery.job_id) in harness.records.records  # the redelivery re-publishes it


async def test_an_init_image_key_of_another_callers_job_is_forbidden():
    harness = Harness()
    theirs, _ = harness.delivery(subject="mallory")
    harness.records.records[str(theirs.job_id)] = StoredRecord(
        event=FailedEvent.model_validate(
            {
                "job_id": theirs.job_id,
                "model": "default",
                "worker": "w",
                "attempt": 1,
                "error": {"code": "cancelled", "message": "x", "retryable": False},
            }
        ),
        owner=Caller("sdqueue", "mallory"),
    )
    key = output_key(str(theirs.job_id), 0, "png")
    harness.objects.objects[key] = b"not even an image"
    delivery, verification = harness.delivery(mode="img2img", init_image={"key": key})

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.FORBIDDEN]


async def test_a_callback_url_queues_the_webhook_with_the_callers_issuer():
    harness = Harness(webhooks={"allowed_hosts": ["hooks.example"], "secret": SECRET})
    delivery, verification = harness.delivery(callback_url="https://hooks.example/done")

    assert await harness.path.settle_as(delivery, verification) == "ack"

    assert harness.webhooks.queued == [(str(delivery.job_id), "https://hooks.example/done", "sdqueue")]


async def test_intake_moves_a_caller_over_its_share_to_the_overflow_lane_and_acks():
    harness = Harness(fairness={"enabled": True, "max_per_caller": 1})
    intake = FairIntake(harness.settings.fairness)
    requeue = RecordingRequeue()
    first, first_verification = harness.delivery()
    second, second_verification = harness.delivery()
    overflowed: list[int] = []

    kept = await take_in(first, first_verification, intake=intake, requeue=requeue, on_overflow=lambda: None)
    moved = await take_in(
        second, second_verification, intake=intake, requeue=requeue, on_overflow=lambda: overflowed.append(1)
    )

    assert kept is not None
    assert moved is None
    assert requeue.overflowed == [second.job_id]
    assert cast(SettledMessage, second.message).settled == ["ack"]
    assert overflowed == [1]
    kept()
    assert intake.held(ALICE) == 0
