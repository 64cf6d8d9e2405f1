"""One job through the stages: validate → claim → load inputs → generate → encode → upload → record → publish.

The token was verified once at intake (`verify.verify_request`). `JobPath.settle_as` runs a delivery to its
outcome and says how to settle it; `worker.py` owns the loop and the ack itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image

from sdqueue.config import LimitSettings, Settings
from sdqueue.contracts import (
    AdapterRef,
    GenerationRequest,
    ImageInfo,
    InitImageData,
    InitImageKey,
    PreviewImage,
    ProgressEvent,
    SucceededEvent,
)
from sdqueue.contracts.adapters import applied
from sdqueue.contracts.errors import (
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
from sdqueue.contracts.topology import output_key
from sdqueue.worker.adapters import fetch_adapters
from sdqueue.worker.claim import claim_job, is_held_by_another
from sdqueue.worker.consume import Delivery
from sdqueue.worker.context import JobContext
from sdqueue.worker.control import JobRegistry
from sdqueue.worker.encode import EncodedImage, encode_images, encode_preview, format_parameters
from sdqueue.worker.fairness import batch_rank
from sdqueue.worker.generate import AdapterFile, GeneratedImages, GenerationSpec, HiresPass, StepPreview
from sdqueue.worker.inputs import InputField, decode_inline_image, input_key_job, key_forbidden, load_init_image
from sdqueue.worker.metrics import WorkerMetrics
from sdqueue.worker.outcome import Outcomes
from sdqueue.worker.ports import Generates, ObjectStore, Requeue
from sdqueue.worker.publish import PublishFailed
from sdqueue.worker.retry import retry_backoff_s
from sdqueue.worker.settle import Settlement
from sdqueue.worker.validate import image_seeds, model_defaults, parse_job
from sdqueue.worker.verify import Verification
from sdqueue.worker.webhooks import check_callback_url

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
# A progress update for the pump: step, steps and, now and then, a preview.
ProgressItem = tuple[int, int, PreviewImage | None]


@dataclass(frozen=True)
class InputImages:
    """A job's input pictures, loaded: the img2img or inpaint init image (RGB) and the inpaint mask (greyscale)."""

    init: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass(frozen=True, kw_only=True)
class JobPath:
    """The stages of a job with their collaborators, each a narrow protocol (`ports.py`) or a plain value."""

    settings: Settings
    outcomes: Outcomes
    objects: ObjectStore
    requeue: Requeue
    generators: Mapping[str, Generates]
    registry: JobRegistry
    metrics: WorkerMetrics
    stop_generation: threading.Event

    async def settle_as(self, delivery: Delivery, verification: Verification) -> Settlement:
        """Run one delivery to its outcome and say how to settle it; the single per-job guard (never raises)."""
        if delivery.job_id is None:
            log.warning("dead-lettering a message with no usable job id (%d bytes)", len(delivery.body))
            return "reject"
        ctx = JobContext(
            job_id=delivery.job_id,
            model=delivery.alias,
            worker=self.settings.worker_name,
            attempt=delivery.attempt,
            published_at=delivery.published_at,
        )
        try:
            return await self._outcome_of(delivery, verification, ctx=ctx)
        except PublishFailed as exc:
            log.warning("job %s: %s; requeueing", ctx.job_id, exc)
            return "requeue"
        except Exception as exc:  # a bug must not kill the worker or lose the job
            log.exception("job %s: unexpected error", ctx.job_id)
            try:
                return await self.retry_or_give_up(exc, ctx=ctx, delivery=delivery)
            except PublishFailed:
                return "requeue"

    async def _outcome_of(self, delivery: Delivery, verification: Verification, *, ctx: JobContext) -> Settlement:
        """Turn the job's error, if any, into its reported outcome and settlement."""
        try:
            await self._run(delivery, verification, ctx=ctx)
        except ServiceUnavailable as error:
            return await self.retry_or_give_up(error, ctx=ctx, delivery=delivery)
        except Unattributed as error:
            log.warning("job %s: dead-lettered unreported: %s (%s)", ctx.job_id, error.code, error.message)
            return "reject"
        except Cancelled as error:
            log.info("job %s cancelled: %s", ctx.job_id, error.message)
            await self.outcomes.record_and_publish(ctx.cancelled(error.to_info()), ctx=ctx, delivery=delivery)
            return "ack"
        except SdqueueError as error:
            await self._reject(error, ctx=ctx, delivery=delivery)
            return "reject"
        return "ack"

    async def _reject(self, error: SdqueueError, *, ctx: JobContext, delivery: Delivery) -> None:
        """Report a rejected job to its verified caller, unless the job id is another caller's (then say nothing)."""
        records = self.outcomes.records
        if ctx.caller is not None and await is_held_by_another(ctx.job_id, caller=ctx.caller, records=records):
            log.warning(
                "job %s: %s by %s, but the job id is another caller's; unreported", ctx.job_id, error.code, ctx.caller
            )
            return
        log.info("job %s failed: %s (%s)", ctx.job_id, error.code, error.message)
        await self.outcomes.record_and_publish(ctx.failed(error.to_info()), ctx=ctx, delivery=delivery)

    async def retry_or_give_up(self, error: Exception, *, ctx: JobContext, delivery: Delivery) -> Settlement:
        """Send a retryable failure to the retry queue (acking this delivery), or once the delivery limit is spent,
        report `delivery_limit_exceeded` and dead-letter it."""
        broker = self.settings.broker
        if delivery.retries + delivery.delivery_count >= broker.delivery_limit:
            reason = error.message if isinstance(error, SdqueueError) else "internal error"
            final = DeliveryLimitExceeded(f"gave up after {delivery.attempt} attempts; last error: {reason}")
            log.warning("job %s: %s", ctx.job_id, final.message)
            await self.outcomes.record_and_publish(ctx.failed(final.to_info()), ctx=ctx, delivery=delivery)
            return "reject"
        self.metrics.requeues.labels(model=ctx.model).inc()
        backoff_s = retry_backoff_s(delivery.retries, broker=broker)
        log.warning("job %s: retryable failure (%s); retry in %.1fs", ctx.job_id, error, backoff_s)
        return "ack" if await self.requeue.retry_later(delivery, backoff_s=backoff_s) else "requeue"

    async def _run(self, delivery: Delivery, verification: Verification, *, ctx: JobContext) -> None:
        """The happy path; any stage may raise one of our errors, which the caller turns into an outcome."""
        ctx.caller = verification.caller
        claims = verification.require_claims()
        ctx.owner, ctx.rank = claims.caller, batch_rank(delivery.lane, claims.quota.priority)
        generator = self.generators[delivery.alias]
        request = parse_job(
            delivery.body,
            job_id=ctx.job_id,
            limits=self.settings.limits,
            # The routing key chose this queue; a body naming another alias was routed wrongly.
            served_models=(delivery.alias,),
            schedulers=generator.scheduler_names,
            quota=claims.quota,
            defaults=model_defaults(self.settings.model_defaults.get(delivery.alias), family=generator.family),
        )
        ctx.model, ctx.metadata = request.model, dict(request.metadata)
        ctx.callback_url = check_callback_url(request.callback_url, webhooks=self.settings.webhooks)
        if await self.outcomes.replay_record(ctx=ctx, delivery=delivery):
            return
        await claim_job(ctx.job_id, caller=claims.caller, records=self.outcomes.records)
        stop = self.registry.start(ctx.job_id, owner=claims.caller)
        if stop is None:
            raise Cancelled("the job was cancelled before it started")
        try:
            await self._produce(request, generator, stop=stop, ctx=ctx, delivery=delivery)
        finally:
            self.registry.finish(ctx.job_id)

    async def _produce(
        self,
        request: GenerationRequest,
        generator: Generates,
        *,
        stop: threading.Event,
        ctx: JobContext,
        delivery: Delivery,
    ) -> None:
        """Load inputs, generate, encode, upload, then record and publish the result."""
        inputs = InputImages(
            init=await self._input_image(request.init_image, field="init_image", ctx=ctx),
            mask=await self._input_image(request.mask_image, field="mask_image", ctx=ctx),
        )
        adapters = await fetch_adapters(
            request.adapters, objects=self.objects, named=self.settings.adapters, limits=self.settings.limits
        )
        await self.outcomes.publish(ctx.started(), delivery=delivery)
        spec = generation_spec(request, inputs, limits=self.settings.limits, adapters=adapters)
        generated = await self._generate(spec, generator, stop=stop, ctx=ctx, delivery=delivery)
        with ctx.phase("encode"):
            encoded = await asyncio.to_thread(encode_job, request, generated)
        with ctx.phase("upload"):
            images = await upload_images(request, encoded, objects=self.objects)
        event = SucceededEvent.model_validate(
            {
                **ctx.event_fields(),
                "images": images,
                "timings": ctx.timings(),
                "warnings": generated.warnings,
                "adapters": [applied(adapter) for adapter in request.adapters],
            }
        )
        await self.outcomes.record_and_publish(event, ctx=ctx, delivery=delivery)

    async def _input_image(
        self, reference: InitImageKey | InitImageData | None, *, field: InputField, ctx: JobContext
    ) -> Image.Image | None:
        """Load an input image (init image, inpaint mask), inline or from the bucket; None when the request has none.

        Raises:
            Forbidden: the key is not this job's input nor an output of the caller's own job.
            InvalidImage, ImageTooLarge: the image is missing, unreadable or too large.
            StorageError: the bucket is unreachable.
        """
        limits = self.settings.limits
        if reference is None:
            return None
        if isinstance(reference, InitImageData):
            data = decode_inline_image(reference.data, max_bytes=limits.max_inline_image_bytes, field=field)
        else:
            await self._check_input_key(reference.key, field=field, ctx=ctx)
            data = await self._read_input_object(reference.key, field=field)
        image = await asyncio.to_thread(load_init_image, data, limits=limits, field=field)
        return image.convert("L") if field == "mask_image" else image

    async def _check_input_key(self, key: str, *, field: InputField, ctx: JobContext) -> None:
        """Allow this job's own inputs, and the outputs of a job whose record has the same owner.

        Raises:
            Forbidden: any other key (one message whether or not the object exists).
        """
        source = input_key_job(key, job_id=ctx.job_id, field=field)
        if source == ctx.job_id:
            return
        record = await self.outcomes.records.read(source)
        if record is None or record.owner != ctx.owner:
            raise Forbidden(key_forbidden(field))

    async def _read_input_object(self, key: str, *, field: InputField) -> bytes:
        """Read an input image by key; a 4xx other than throttling is the key's fault, not an outage.

        Raises:
            InvalidImage: the object is missing or the bucket refused this key.
            StorageError: the bucket is unreachable.
        """
        try:
            data = await self.objects.read(key, max_bytes=self.settings.limits.max_init_image_bytes)
        except StorageRefused as exc:
            raise InvalidImage(f"{field} key cannot be read") from exc
        if data is None:
            raise InvalidImage(f"{field} key does not exist in the bucket")
        return data

    async def _generate(
        self,
        spec: GenerationSpec,
        generator: Generates,
        *,
        stop: threading.Event,
        ctx: JobContext,
        delivery: Delivery,
    ) -> GeneratedImages:
        """Run the model on the worker's single generation thread, publishing throttled progress (and previews, when
        asked for) meanwhile."""
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[ProgressItem | None] = asyncio.Queue()
        on_step = _throttled(lambda step, total: loop.call_soon_threadsafe(steps.put_nowait, (step, total, None)))

        def on_preview(preview: StepPreview) -> None:
            # Encoded here, on the generation thread: a preview is due at most every interval and is at most 256 px.
            item = (preview.step, preview.steps, encode_preview(preview.image))
            loop.call_soon_threadsafe(steps.put_nowait, item)

        pump = asyncio.create_task(self._pump_progress(steps, ctx=ctx, delivery=delivery))
        budget_s = self.settings.limits.max_generate_s
        deadline = time.monotonic() + budget_s

        def should_stop() -> bool:
            return stop.is_set() or self.stop_generation.is_set() or time.monotonic() > deadline

        try:
            with ctx.phase("generate"):
                generated = await generator.generate(
                    spec, on_step=on_step, should_stop=should_stop, on_preview=on_preview, rank=ctx.rank
                )
        except Cancelled as exc:
            # A cancel by the caller is a cancel even when it lands after the budget.
            if not stop.is_set() and time.monotonic() > deadline:
                raise LimitsExceeded(f"generation took longer than its {budget_s:g}s budget") from exc
            raise
        finally:
            steps.put_nowait(None)
            await pump
        if stop.is_set():
            # Cancelled while its batch ran on for the other jobs in it.
            raise Cancelled("the job was cancelled while it was generating")
        return generated

    async def _pump_progress(
        self, steps: asyncio.Queue[ProgressItem | None], *, ctx: JobContext, delivery: Delivery
    ) -> None:
        """Publish progress events until the sentinel arrives; a lost progress event is only logged."""
        while (item := await steps.get()) is not None:
            step, total, preview = item
            event = ProgressEvent.model_validate(
                {**ctx.event_fields(), "step": step, "steps": total, "preview": preview}
            )
            try:
                await self.outcomes.publish(event, delivery=delivery)
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


def generation_spec(
    request: GenerationRequest,
    inputs: InputImages,
    *,
    limits: LimitSettings,
    adapters: tuple[AdapterFile, ...] = (),
) -> GenerationSpec:
    """What the model runs for a validated request: one seed per image, the input images and adapters already
    loaded and checked."""
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
        init_image=inputs.init,
        mask_image=inputs.mask,
        mask_blur_px=request.effective_mask_blur,
        hires=hires_pass(request),
        preview_interval_s=preview_interval_s(request, limits=limits),
        adapters=adapters,
    )


def hires_pass(request: GenerationRequest) -> HiresPass | None:
    """The hires fix's second pass at the request's final size, or None without one."""
    if request.hires is None:
        return None
    width, height = request.output_size
    return HiresPass(width=width, height=height, steps=request.hires.steps, strength=request.hires.strength)


def preview_interval_s(request: GenerationRequest, *, limits: LimitSettings) -> float | None:
    """How often the job gets a preview: its own interval, else the worker's minimum; None without previews."""
    if not request.previews:
        return None
    return request.preview_interval_s or limits.min_preview_interval_s


def encode_job(request: GenerationRequest, generated: GeneratedImages) -> list[EncodedImage]:
    """Encode a job's images in its output format, each with its own seed in the embedded parameters."""
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
            strength=request.effective_strength if request.mode != "txt2img" else None,
            extras=parameter_extras(request),
        )
        for seed in image_seeds(request)
    ]
    return encode_images(generated.images, fmt=request.output_format, parameters=parameters)


def parameter_extras(request: GenerationRequest) -> dict[str, str]:
    """The hires and inpaint settings in the names AUTOMATIC1111 gives them (its Size is the first pass's)."""
    extras: dict[str, str] = {}
    if request.hires is not None:
        extras |= {
            "Denoising strength": f"{request.hires.strength:g}",
            "Hires upscale": f"{request.hires.scale:g}",
            "Hires steps": str(request.hires.steps),
            "Hires upscaler": "Lanczos",
        }
    if request.mode == "inpaint":
        extras["Mask blur"] = str(request.effective_mask_blur)
    return extras | adapter_extras(request.adapters)


def adapter_extras(adapters: list[AdapterRef]) -> dict[str, str]:
    """The adapters as AUTOMATIC1111 names them: `Lora hashes` and `TI hashes` (12 hex digits each), plus scales."""
    loras = [adapter for adapter in adapters if adapter.kind == "lora"]
    embeddings = [adapter for adapter in adapters if adapter.kind == "embedding"]
    extras: dict[str, str] = {}
    if loras:
        extras["Lora hashes"] = ", ".join(f"{_label(a)}: {a.sha256[:12]}" for a in loras)
        extras["Lora scales"] = ", ".join(f"{_label(a)}: {a.scale:g}" for a in loras)
    if embeddings:
        extras["TI hashes"] = ", ".join(f"{a.token}: {a.sha256[:12]}" for a in embeddings)
    return extras


def _label(adapter: AdapterRef) -> str:
    """A short name: the map's name, or the key's file name without `.safetensors`."""
    return adapter.name or (adapter.key or "").rsplit("/", 1)[-1].removesuffix(".safetensors")


async def upload_images(
    request: GenerationRequest, encoded: list[EncodedImage], *, objects: ObjectStore
) -> list[ImageInfo]:
    """Put every image under `outputs/<job_id>/` (deterministic keys: a redelivery overwrites, never adds)."""
    keys = [output_key(request.job_id, index, image.extension) for index, image in enumerate(encoded)]
    await asyncio.gather(
        *(
            objects.write(key, image.data, content_type=image.content_type)
            for key, image in zip(keys, encoded, strict=True)
        )
    )
    return [
        ImageInfo(
            index=index,
            key=key,
            url=objects.url(key),
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            seed=seed,
            sha256=image.sha256,
            size=image.size,
        )
        for index, (key, image, seed) in enumerate(zip(keys, encoded, image_seeds(request), strict=True))
    ]
