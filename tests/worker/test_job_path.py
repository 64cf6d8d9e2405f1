"""The job path driven with in-memory collaborators: every outcome a delivery can have, without broker or bucket.

The same behaviours run on real parts in tests/e2e (round trip, rejections, img2img keys) and tests/faults
(tokens, tenants, outages, retries); these pin the job path's own decisions quickly.
"""

from __future__ import annotations

import base64
import io
import threading
from datetime import UTC, datetime
from typing import Any, cast

from PIL import Image
from pydantic import SecretStr

from sdqueue.client import new_job_id
from sdqueue.client.tokens import mint_token
from sdqueue.config import AuthSettings, Settings
from sdqueue.contracts import ErrorCode, FailedEvent, GenerationRequest, ProgressEvent, SucceededEvent
from sdqueue.contracts.topology import input_key, mask_key, output_key
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

    def failure_messages(self) -> list[str]:
        return [event.error.message for event in self.events.published if isinstance(event, FailedEvent)]

    def record_of(self, subject: str) -> str:
        """A finished job of `subject`'s, with its output image in the store; returns the image's key."""
        theirs, _ = self.delivery(subject=subject)
        self.records.records[str(theirs.job_id)] = StoredRecord(
            event=FailedEvent.model_validate(
                {
                    "job_id": theirs.job_id,
                    "model": "default",
                    "worker": "w",
                    "attempt": 1,
                    "error": {"code": "cancelled", "message": "x", "retryable": False},
                }
            ),
            owner=Caller("sdqueue", subject),
        )
        key = output_key(str(theirs.job_id), 0, "png")
        self.objects.objects[key] = _png((64, 64), "RGB")
        return key


def _png(size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 255).save(buffer, format="PNG")
    return buffer.getvalue()


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


async def test_an_inpaint_job_loads_its_own_mask_upload_as_greyscale():
    harness = Harness()
    job_id = "inpaint-own-inputs"
    harness.objects.objects[input_key(job_id, "png")] = _png((80, 48), "RGB")
    harness.objects.objects[mask_key(job_id, "png")] = _png((80, 48), "RGBA")
    delivery, verification = harness.delivery(
        job_id=job_id,
        mode="inpaint",
        init_image={"key": input_key(job_id, "png")},
        mask_image={"key": mask_key(job_id, "png")},
        mask_blur=3,
    )

    assert await harness.path.settle_as(delivery, verification) == "ack"

    [spec] = harness.generator.calls
    assert spec.init_image is not None
    assert spec.mask_image is not None
    assert (spec.init_image.mode, spec.mask_image.mode, spec.mask_image.size) == ("RGB", "L", (80, 48))
    assert (spec.strength, spec.mask_blur_px) == (1.0, 3)


async def test_a_mask_key_of_the_callers_own_finished_job_is_allowed():
    harness = Harness()
    key = harness.record_of("alice")
    delivery, verification = harness.delivery(
        mode="inpaint", init_image={"data": base64.b64encode(_png((64, 64), "RGB")).decode()}, mask_image={"key": key}
    )

    assert await harness.path.settle_as(delivery, verification) == "ack"


async def test_a_mask_key_of_another_callers_job_is_forbidden():
    harness = Harness()
    key = harness.record_of("mallory")
    delivery, verification = harness.delivery(mode="inpaint", init_image={"key": key}, mask_image={"key": key})
    own, own_verification = harness.delivery(
        mode="inpaint",
        init_image={"data": base64.b64encode(_png((64, 64), "RGB")).decode()},
        mask_image={"key": key},
    )

    assert await harness.path.settle_as(delivery, verification) == "reject"
    assert await harness.path.settle_as(own, own_verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.FORBIDDEN, ErrorCode.FORBIDDEN]
    assert harness.failure_messages()[1].startswith("mask_image.key must be under inputs/<job_id>/")
    assert harness.generator.calls == []


async def test_a_mask_key_under_another_jobs_inputs_is_forbidden_and_a_missing_one_invalid():
    harness = Harness()
    inline = {"data": base64.b64encode(_png((64, 64), "RGB")).decode()}
    elsewhere, elsewhere_verification = harness.delivery(
        mode="inpaint", init_image=inline, mask_image={"key": "inputs/someone-else/mask.png"}
    )
    missing, missing_verification = harness.delivery(
        job_id="mask-missing", mode="inpaint", init_image=inline, mask_image={"key": mask_key("mask-missing", "png")}
    )

    await harness.path.settle_as(elsewhere, elsewhere_verification)
    await harness.path.settle_as(missing, missing_verification)

    assert harness.failure_codes() == [ErrorCode.FORBIDDEN, ErrorCode.INVALID_IMAGE]
    assert harness.failure_messages()[1] == "mask_image key does not exist in the bucket"


async def test_previews_ride_on_progress_events_before_the_result():
    harness = Harness()
    delivery, verification = harness.delivery(previews=True, preview_interval_s=1)

    assert await harness.path.settle_as(delivery, verification) == "ack"

    [spec] = harness.generator.calls
    assert spec.preview_interval_s == 1
    previews = [e.preview for e in harness.events.published if isinstance(e, ProgressEvent) and e.preview is not None]
    assert len(previews) == 3  # the in-memory generator sends one per step
    picture = Image.open(io.BytesIO(base64.b64decode(previews[0].data)))
    assert (picture.format, picture.size) == ("WEBP", (previews[0].width, previews[0].height))
    assert harness.events.types[-1] == "succeeded"


async def test_previews_default_to_the_workers_minimum_interval_and_are_off_unless_asked():
    harness = Harness(limits={"min_preview_interval_s": 2.5})
    delivery, verification = harness.delivery(previews=True)
    plain, plain_verification = harness.delivery()

    await harness.path.settle_as(delivery, verification)
    await harness.path.settle_as(plain, plain_verification)

    assert [spec.preview_interval_s for spec in harness.generator.calls] == [2.5, None]
    progress = [e for e in harness.events.published if isinstance(e, ProgressEvent)]
    assert sum(e.preview is not None for e in progress) == 3


async def test_a_preview_interval_under_the_workers_minimum_is_an_invalid_request():
    harness = Harness(limits={"min_preview_interval_s": 2})
    delivery, verification = harness.delivery(previews=True, preview_interval_s=1.5)

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.INVALID_REQUEST]
    assert harness.generator.calls == []


async def test_hires_runs_to_the_final_size_and_the_pixel_cap_applies_to_it():
    harness = Harness(limits={"max_pixels": 128 * 128})
    fits, fits_verification = harness.delivery(hires={"scale": 2, "steps": 4, "strength": 0.5})
    over, over_verification = harness.delivery(hires={"scale": 2.5, "steps": 4})

    assert await harness.path.settle_as(fits, fits_verification) == "ack"
    assert await harness.path.settle_as(over, over_verification) == "reject"

    succeeded = next(e for e in harness.events.published if isinstance(e, SucceededEvent))
    assert (succeeded.images[0].width, succeeded.images[0].height) == (128, 128)
    [spec] = harness.generator.calls
    assert spec.hires is not None
    assert (spec.width, spec.hires.width, spec.hires.steps, spec.hires.strength) == (64, 128, 4, 0.5)
    assert harness.failure_codes() == [ErrorCode.LIMITS_EXCEEDED]
    assert harness.failure_messages() == ["160x160 is over the 16384 pixel cap"]
