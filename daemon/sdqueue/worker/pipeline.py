"""One job through the stages: verify → validate → load input → generate → encode → upload → record → publish.

Returns how to settle the delivery; `worker.py` owns the loop, the guard and the ack itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, unquote

from aio_pika.abc import AbstractChannel, AbstractExchange
from PIL import Image

from sdqueue.config import Settings
from sdqueue.contracts import (
    GenerationRequest,
    ImageInfo,
    InitImageData,
    JobEvent,
    ProgressEvent,
    SucceededEvent,
    TerminalEvent,
    parse_terminal_event,
)
from sdqueue.contracts.topology import output_key, record_key
from sdqueue.worker import store
from sdqueue.worker.batching import Batcher
from sdqueue.worker.consume import Delivery
from sdqueue.worker.context import JobContext
from sdqueue.worker.control import JobRegistry
from sdqueue.worker.encode import EncodedImage, encode_images, format_parameters
from sdqueue.worker.errors import (
    Cancelled,
    DeliveryLimitExceeded,
    Forbidden,
    InvalidImage,
    LimitsExceeded,
    SdqueueError,
    ServiceUnavailable,
    StorageError,
)
from sdqueue.worker.generate import GeneratedImages, GenerationSpec, ImageGenerator
from sdqueue.worker.inputs import decode_inline_image, load_init_image
from sdqueue.worker.publish import PublishFailed, publish_event
from sdqueue.worker.settle import Settlement
from sdqueue.worker.validate import image_seeds, job_id_from_body, parse_job
from sdqueue.worker.verify import VerificationKeys, verify_token

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

OWNER_METADATA_KEY = "sub"
MAX_RECORD_BYTES = 1024 * 1024
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything a job needs that the worker opened once at start."""

    settings: Settings
    keys: VerificationKeys
    generators: Mapping[str, ImageGenerator]
    batchers: Mapping[str, Batcher]
    s3: S3Client
    channel: AbstractChannel
    events: AbstractExchange
    stop_generation: threading.Event
    registry: JobRegistry


async def process_delivery(delivery: Delivery, services: Services) -> Settlement:
    """Run one delivery to its outcome and say how to settle it.

    Raises:
        PublishFailed: the outcome could not be confirmed; the caller requeues.
    """
    job_id = delivery.message_id or job_id_from_body(delivery.body)
    if job_id is None:
        log.warning("dead-lettering a message with no usable job id (%d bytes)", len(delivery.body))
        return "reject"
    ctx = JobContext(
        job_id=job_id,
        model=delivery.alias,
        worker=services.settings.worker_name,
        attempt=delivery.attempt,
        published_at=delivery.published_at,
    )
    try:
        await run_job(delivery, ctx, services)
    except ServiceUnavailable as error:
        return await retry_or_give_up(error, ctx=ctx, delivery=delivery, services=services)
    except Cancelled as error:
        log.info("job %s cancelled: %s", job_id, error.message)
        await finish(ctx.cancelled(error.to_info()), ctx=ctx, delivery=delivery, services=services)
        return "ack"
    except SdqueueError as error:
        log.info("job %s failed: %s (%s)", job_id, error.code, error.message)
        await report_failure(error, ctx=ctx, delivery=delivery, services=services)
        return "reject"
    return "ack"


async def retry_or_give_up(error: Exception, *, ctx: JobContext, delivery: Delivery, services: Services) -> Settlement:
    """Requeue a retryable failure after a backoff, or on the last allowed delivery report it and dead-letter."""
    limit = services.settings.broker.delivery_limit
    if delivery.delivery_count >= limit:
        reason = error.message if isinstance(error, SdqueueError) else "internal error"
        final = DeliveryLimitExceeded(f"gave up after {delivery.attempt} attempts; last error: {reason}")
        log.warning("job %s: %s", ctx.job_id, final.message)
        await report_failure(final, ctx=ctx, delivery=delivery, services=services)
        return "reject"
    backoff_s = min(0.5 * 2**delivery.delivery_count, 10.0)
    log.warning("job %s: retryable failure (%s); requeue in %.1fs", ctx.job_id, error, backoff_s)
    await asyncio.sleep(backoff_s)
    return "requeue"


async def durable(operation: Callable[[], Awaitable[T]], *, job_id: str, budget_s: float) -> T:
    """Run a storage operation, waiting out an outage of up to `budget_s` in place so it burns no delivery.

    Raises:
        StorageError: storage stayed unavailable for the whole budget.
    """
    deadline = time.monotonic() + budget_s
    delay_s = 0.5
    while True:
        try:
            return await operation()
        except StorageError as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("job %s: %s; retrying in %.1fs", job_id, exc.message, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)


async def run_job(delivery: Delivery, ctx: JobContext, services: Services) -> None:
    """The happy path; any stage may raise one of our errors, which the caller turns into an outcome."""
    settings = services.settings
    claims = verify_token(
        delivery.authorization, body=delivery.body, job_id=ctx.job_id, auth=settings.auth, keys=services.keys
    )
    ctx.owner = claims.subject
    generator = services.generators[delivery.alias]
    request = parse_job(
        delivery.body,
        job_id=ctx.job_id,
        limits=settings.limits,
        served_models=services.generators.keys(),
        schedulers=generator.scheduler_names,
    )
    ctx.model, ctx.metadata = request.model, dict(request.metadata)
    if await republish_record(ctx=ctx, delivery=delivery, services=services):
        return
    stop = services.registry.start(ctx.job_id, owner=claims.subject)
    if stop is None:
        raise Cancelled("the job was cancelled before it started")
    try:
        await produce(request, stop=stop, ctx=ctx, delivery=delivery, services=services)
    finally:
        services.registry.finish(ctx.job_id)


async def produce(
    request: GenerationRequest, *, stop: threading.Event, ctx: JobContext, delivery: Delivery, services: Services
) -> None:
    """Load input, generate, encode, upload, then record and publish the result."""
    init_image = await fetch_init_image(request, services=services)
    await emit(ctx.started(), delivery=delivery, services=services)
    generated = await generate(
        request,
        init_image,
        batcher=services.batchers[request.model],
        stop=stop,
        ctx=ctx,
        delivery=delivery,
        services=services,
    )
    with ctx.phase("encode"):
        encoded = await asyncio.to_thread(_encode, request, generated)
    with ctx.phase("upload"):
        images = await upload_images(request, encoded, services=services)
    if services.settings.faults.exit_after_upload:
        log.critical("job %s: test fault: exiting between upload and record", ctx.job_id)
        os._exit(137)
    event = SucceededEvent.model_validate(
        {**ctx.event_fields(), "images": images, "timings": ctx.timings(), "warnings": generated.warnings}
    )
    await finish(event, ctx=ctx, delivery=delivery, services=services)


@dataclass(frozen=True)
class StoredRecord:
    """A job's result record as found in the bucket, with the caller that owns it."""

    event: TerminalEvent
    owner: str


async def load_record(job_id: str, *, services: Services) -> StoredRecord | None:
    """Read `jobs/<job_id>.json`, or None when the job has no record yet.

    Raises:
        StorageError: the bucket is unreachable.
    """
    s3 = services.settings.s3
    stored = await durable(
        lambda: store.read_object(services.s3, bucket=s3.bucket, key=record_key(job_id), max_bytes=MAX_RECORD_BYTES),
        job_id=job_id,
        budget_s=s3.outage_budget_s,
    )
    if stored is None:
        return None
    owner = unquote(stored.metadata.get(OWNER_METADATA_KEY, ""))
    return StoredRecord(event=parse_terminal_event(stored.data), owner=owner)


async def republish_record(*, ctx: JobContext, delivery: Delivery, services: Services) -> bool:
    """If this job already has a result record, publish it again instead of generating twice.

    Raises:
        Forbidden: the job id belongs to another caller.
    """
    record = await load_record(ctx.job_id, services=services)
    if record is None:
        return False
    if record.owner != ctx.owner:
        raise Forbidden("this job id is already used by another caller")
    log.info("job %s already finished; re-publishing its record", ctx.job_id)
    await emit(record.event, delivery=delivery, services=services)
    return True


async def fetch_init_image(request: GenerationRequest, *, services: Services) -> Image.Image | None:
    """Load the img2img init image, inline or from the bucket, as RGB.

    Raises:
        InvalidImage, ImageTooLarge: the image is missing, unreadable or too large.
        StorageError: the bucket is unreachable.
    """
    limits = services.settings.limits
    if request.init_image is None:
        return None
    if isinstance(request.init_image, InitImageData):
        data = decode_inline_image(request.init_image.data, max_bytes=limits.max_inline_image_bytes)
    else:
        key, s3 = request.init_image.key, services.settings.s3
        stored = await durable(
            lambda: store.read_object(services.s3, bucket=s3.bucket, key=key, max_bytes=limits.max_init_image_bytes),
            job_id=request.job_id,
            budget_s=s3.outage_budget_s,
        )
        if stored is None:
            raise InvalidImage("init image key does not exist in the bucket")
        data = stored.data
    return await asyncio.to_thread(load_init_image, data, limits=limits)


async def generate(
    request: GenerationRequest,
    init_image: Image.Image | None,
    *,
    batcher: Batcher,
    stop: threading.Event,
    ctx: JobContext,
    delivery: Delivery,
    services: Services,
) -> GeneratedImages:
    """Run the model on the worker's single generation thread, publishing throttled progress meanwhile."""
    spec = GenerationSpec(
        mode=request.mode,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seeds=image_seeds(request),
        scheduler=request.scheduler,
        strength=request.effective_strength,
        init_image=init_image,
    )
    marker = services.settings.faults.fail_prompt_marker
    if marker and marker in request.prompt:
        raise RuntimeError("test fault: generation fails for this prompt")
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    on_step = _throttled(lambda step, total: loop.call_soon_threadsafe(steps.put_nowait, (step, total)))
    pump = asyncio.create_task(pump_progress(steps, ctx=ctx, delivery=delivery, services=services))
    deadline = time.monotonic() + services.settings.limits.max_generate_s

    def should_stop() -> bool:
        return stop.is_set() or services.stop_generation.is_set() or time.monotonic() > deadline

    try:
        with ctx.phase("generate"):
            generated = await batcher.generate(spec, on_step=on_step, should_stop=should_stop)
    except Cancelled as exc:
        if time.monotonic() > deadline:
            budget_s = services.settings.limits.max_generate_s
            raise LimitsExceeded(f"generation took longer than its {budget_s:g}s budget") from exc
        raise
    finally:
        steps.put_nowait(None)
        await pump
    if stop.is_set():
        # Cancelled while its batch ran on for the other jobs in it.
        raise Cancelled("the job was cancelled while it was generating")
    return generated


async def pump_progress(
    steps: asyncio.Queue[tuple[int, int] | None], *, ctx: JobContext, delivery: Delivery, services: Services
) -> None:
    """Publish progress events until the sentinel arrives; a lost progress event is only logged."""
    while (item := await steps.get()) is not None:
        event = ProgressEvent.model_validate({**ctx.event_fields(), "step": item[0], "steps": item[1]})
        try:
            await emit(event, delivery=delivery, services=services)
        except PublishFailed as exc:
            log.debug("job %s: progress event lost: %s", ctx.job_id, exc)


def _throttled(send: Callable[[int, int], object]) -> Callable[[int, int], None]:
    """Wrap a step callback so it fires at most every PROGRESS_INTERVAL_S, and always on the last step."""
    last = [0.0]

    def on_step(step: int, total: int) -> None:
        now = time.monotonic()
        if step >= total or now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            send(step, total)

    return on_step


def _encode(request: GenerationRequest, generated: GeneratedImages) -> list[EncodedImage]:
    seeds = image_seeds(request)
    parameters = [
        format_parameters(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            steps=request.steps,
            sampler=request.scheduler or "default",
            guidance_scale=request.guidance_scale,
            seed=seed,
            width=request.width,
            height=request.height,
            model=request.model,
            strength=request.effective_strength if request.mode == "img2img" else None,
        )
        for seed in seeds
    ]
    return encode_images(generated.images, fmt=request.output_format, parameters=parameters)


async def upload_images(
    request: GenerationRequest, encoded: list[EncodedImage], *, services: Services
) -> list[ImageInfo]:
    """Put every image under `outputs/<job_id>/` (deterministic keys: a redelivery overwrites, never adds)."""
    s3 = services.settings.s3
    seeds = image_seeds(request)
    keys = [output_key(request.job_id, index, image.extension) for index, image in enumerate(encoded)]

    async def put_all() -> None:
        await asyncio.gather(
            *(
                store.put_object(
                    services.s3, bucket=s3.bucket, key=key, data=image.data, content_type=image.content_type
                )
                for key, image in zip(keys, encoded, strict=True)
            )
        )

    await durable(put_all, job_id=request.job_id, budget_s=s3.outage_budget_s)
    return [
        ImageInfo(
            index=index,
            key=key,
            url=store.object_url(services.s3, s3=s3, key=key),
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            seed=seed,
            sha256=image.sha256,
            size=image.size,
        )
        for index, (key, image, seed) in enumerate(zip(keys, encoded, seeds, strict=True))
    ]


async def finish(event: TerminalEvent, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Store the result record once the caller is known (first writer wins), then publish the stored outcome."""
    if ctx.owner is not None:
        s3, owner = services.settings.s3, quote(ctx.owner, safe="")
        written = await durable(
            lambda: store.put_object_if_absent(
                services.s3,
                bucket=s3.bucket,
                key=record_key(ctx.job_id),
                data=event.model_dump_json().encode(),
                content_type="application/json",
                metadata={OWNER_METADATA_KEY: owner},
            ),
            job_id=ctx.job_id,
            budget_s=s3.outage_budget_s,
        )
        record = None if written else await load_record(ctx.job_id, services=services)
        if record is not None and record.owner == ctx.owner:
            event = record.event
    await emit(event, delivery=delivery, services=services)


async def report_failure(error: SdqueueError, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Publish the failed event, stored as the job's record when the token was verified."""
    await finish(ctx.failed(error.to_info()), ctx=ctx, delivery=delivery, services=services)


async def emit(event: JobEvent, *, delivery: Delivery, services: Services) -> None:
    """Publish one event of this delivery's job, with confirm, also to the request's `reply_to`."""
    await publish_event(
        event,
        events=services.events,
        channel=services.channel,
        reply_to=delivery.reply_to,
        correlation_id=delivery.correlation_id,
        timeout_s=services.settings.broker.publish_timeout_s,
    )
