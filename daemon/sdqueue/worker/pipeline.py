"""One job through the stages: verify → validate → load input → generate → encode → upload → record → publish.

Returns how to settle the delivery; `worker.py` owns the loop, the guard and the ack itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from PIL import Image

from sdqueue.contracts import (
    GenerationRequest,
    ImageInfo,
    InitImageData,
    ProgressEvent,
    SucceededEvent,
)
from sdqueue.contracts.topology import output_key
from sdqueue.worker import store
from sdqueue.worker.batching import Batcher
from sdqueue.worker.claim import claim_job, is_held_by_another
from sdqueue.worker.consume import Delivery
from sdqueue.worker.context import JobContext
from sdqueue.worker.encode import EncodedImage, encode_images, format_parameters
from sdqueue.worker.errors import (
    Cancelled,
    DeliveryLimitExceeded,
    Forbidden,
    InvalidImage,
    LimitsExceeded,
    SdqueueError,
    ServiceUnavailable,
    StorageRefused,
    Unattributed,
)
from sdqueue.worker.fairness import batch_rank
from sdqueue.worker.generate import GeneratedImages, GenerationSpec
from sdqueue.worker.inputs import INIT_KEY_FORBIDDEN, decode_inline_image, init_key_job, load_init_image
from sdqueue.worker.outcome import emit, finish, load_record, report_failure, republish_record
from sdqueue.worker.publish import PublishFailed
from sdqueue.worker.retry import retry_backoff_s, schedule_retry
from sdqueue.worker.services import Services
from sdqueue.worker.settle import Settlement
from sdqueue.worker.validate import image_seeds, job_id_from_body, parse_job
from sdqueue.worker.verify import GENERATE_SCOPES, authenticate, check_claims
from sdqueue.worker.webhooks import check_callback_url

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25


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
    except Unattributed as error:
        log.warning("job %s: dead-lettered unreported: %s (%s)", job_id, error.code, error.message)
        return "reject"
    except Cancelled as error:
        log.info("job %s cancelled: %s", job_id, error.message)
        await finish(ctx.cancelled(error.to_info()), ctx=ctx, delivery=delivery, services=services)
        return "ack"
    except SdqueueError as error:
        await reject_job(error, ctx=ctx, delivery=delivery, services=services)
        return "reject"
    return "ack"


async def reject_job(error: SdqueueError, *, ctx: JobContext, delivery: Delivery, services: Services) -> None:
    """Report a rejected job to its verified caller, unless the job id is another caller's (then say nothing)."""
    if ctx.caller is not None and await is_held_by_another(ctx.job_id, caller=ctx.caller, services=services):
        log.warning(
            "job %s: %s by %s, but the job id is another caller's; unreported", ctx.job_id, error.code, ctx.caller
        )
        return
    log.info("job %s failed: %s (%s)", ctx.job_id, error.code, error.message)
    await report_failure(error, ctx=ctx, delivery=delivery, services=services)


async def retry_or_give_up(error: Exception, *, ctx: JobContext, delivery: Delivery, services: Services) -> Settlement:
    """Send a retryable failure to the retry queue (acking this delivery), or once the delivery limit is spent,
    report `delivery_limit_exceeded` and dead-letter it."""
    broker = services.settings.broker
    if delivery.retries + delivery.delivery_count >= broker.delivery_limit:
        reason = error.message if isinstance(error, SdqueueError) else "internal error"
        final = DeliveryLimitExceeded(f"gave up after {delivery.attempt} attempts; last error: {reason}")
        log.warning("job %s: %s", ctx.job_id, final.message)
        await report_failure(final, ctx=ctx, delivery=delivery, services=services)
        return "reject"
    services.metrics.requeues.labels(model=ctx.model).inc()
    backoff_s = retry_backoff_s(delivery.retries, broker=broker)
    log.warning("job %s: retryable failure (%s); retry in %.1fs", ctx.job_id, error, backoff_s)
    if await schedule_retry(
        delivery, backoff_s=backoff_s, channel=services.channel, timeout_s=broker.publish_timeout_s
    ):
        return "ack"
    return "requeue"


async def run_job(delivery: Delivery, ctx: JobContext, services: Services) -> None:
    """The happy path; any stage may raise one of our errors, which the caller turns into an outcome."""
    settings = services.settings
    verified = authenticate(delivery.authorization, job_id=ctx.job_id, auth=settings.auth, keys=services.keys)
    ctx.caller = verified.caller
    claims = check_claims(
        verified, body=delivery.body, job_id=ctx.job_id, auth=settings.auth, required_scopes=GENERATE_SCOPES
    )
    ctx.owner, ctx.rank = claims.caller, batch_rank(delivery.lane, claims.quota.priority)
    generator = services.generators[delivery.alias]
    request = parse_job(
        delivery.body,
        job_id=ctx.job_id,
        limits=settings.limits,
        # The routing key chose this queue; a body naming another alias was routed wrongly.
        served_models=(delivery.alias,),
        schedulers=generator.scheduler_names,
        quota=claims.quota,
        defaults=settings.model_defaults.get(delivery.alias),
    )
    ctx.model, ctx.metadata = request.model, dict(request.metadata)
    ctx.callback_url = check_callback_url(request.callback_url, webhooks=settings.webhooks)
    if await republish_record(ctx=ctx, delivery=delivery, services=services):
        return
    await claim_job(ctx.job_id, caller=claims.caller, services=services)
    stop = services.registry.start(ctx.job_id, owner=claims.caller)
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
    init_image = await fetch_init_image(request, ctx=ctx, services=services)
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
        encoded = await asyncio.to_thread(encode_job, request, generated)
    with ctx.phase("upload"):
        images = await upload_images(request, encoded, services=services)
    event = SucceededEvent.model_validate(
        {**ctx.event_fields(), "images": images, "timings": ctx.timings(), "warnings": generated.warnings}
    )
    await finish(event, ctx=ctx, delivery=delivery, services=services)


async def fetch_init_image(request: GenerationRequest, *, ctx: JobContext, services: Services) -> Image.Image | None:
    """Load the img2img init image, inline or from the bucket, as RGB.

    Raises:
        Forbidden: the key is not this job's input nor an output of the caller's own job.
        InvalidImage, ImageTooLarge: the image is missing, unreadable or too large.
        StorageError: the bucket is unreachable.
    """
    limits = services.settings.limits
    if request.init_image is None:
        return None
    if isinstance(request.init_image, InitImageData):
        data = decode_inline_image(request.init_image.data, max_bytes=limits.max_inline_image_bytes)
    else:
        key = request.init_image.key
        await check_init_key(key, ctx=ctx, services=services)
        stored = await store.durable(
            lambda: read_init_object(key, services=services),
            job_id=request.job_id,
            budget_s=services.settings.s3.outage_budget_s,
        )
        if stored is None:
            raise InvalidImage("init image key does not exist in the bucket")
        data = stored.data
    return await asyncio.to_thread(load_init_image, data, limits=limits)


async def check_init_key(key: str, *, ctx: JobContext, services: Services) -> None:
    """Allow this job's own inputs, and the outputs of a job whose record has the same owner.

    Raises:
        Forbidden: any other key (one message whether or not the object exists).
    """
    source = init_key_job(key, job_id=ctx.job_id)
    if source == ctx.job_id:
        return
    record = await load_record(source, services=services)
    if record is None or record.owner != ctx.owner:
        raise Forbidden(INIT_KEY_FORBIDDEN)


async def read_init_object(key: str, *, services: Services) -> store.StoredBytes | None:
    """Read an init image by key; a 4xx other than throttling is the key's fault, not an outage.

    Raises:
        InvalidImage: the bucket refused this key.
        StorageError: the bucket is unreachable.
    """
    s3, limits = services.settings.s3, services.settings.limits
    try:
        return await store.read_object(services.s3, bucket=s3.bucket, key=key, max_bytes=limits.max_init_image_bytes)
    except StorageRefused as exc:
        raise InvalidImage("init image key cannot be read") from exc


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
    spec = generation_spec(request, init_image)
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    on_step = _throttled(lambda step, total: loop.call_soon_threadsafe(steps.put_nowait, (step, total)))
    pump = asyncio.create_task(pump_progress(steps, ctx=ctx, delivery=delivery, services=services))
    deadline = time.monotonic() + services.settings.limits.max_generate_s

    def should_stop() -> bool:
        return stop.is_set() or services.stop_generation.is_set() or time.monotonic() > deadline

    try:
        with ctx.phase("generate"):
            generated = await batcher.generate(spec, on_step=on_step, should_stop=should_stop, rank=ctx.rank)
    except Cancelled as exc:
        # A cancel by the caller is a cancel even when it lands after the budget.
        if not stop.is_set() and time.monotonic() > deadline:
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


def generation_spec(request: GenerationRequest, init_image: Image.Image | None) -> GenerationSpec:
    """What the model runs for a validated request: one seed per image, the init image already loaded."""
    return GenerationSpec(
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


def encode_job(request: GenerationRequest, generated: GeneratedImages) -> list[EncodedImage]:
    """Encode a job's images in its output format, each with its own seed in the embedded parameters."""
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

    await store.durable(put_all, job_id=request.job_id, budget_s=s3.outage_budget_s)
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
