"""The diffusers backend: load a pipeline once, then run txt2img, img2img or inpaint calls on it."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import diffusers
import numpy as np
import numpy.typing as npt
import torch
import transformers
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from PIL import Image, ImageFilter

from sdqueue.config.settings import RuntimeSettings
from sdqueue.contracts import Mode
from sdqueue.contracts.errors import Cancelled, GenerationFailed, InvalidRequest, OutOfMemory
from sdqueue.worker.generate._adapters import AdapterSlots
from sdqueue.worker.generate._invariant import make_batch_invariant
from sdqueue.worker.generate._preview import PreviewTap
from sdqueue.worker.generate._runtime import apply_threads, resolve_device, resolve_dtype
from sdqueue.worker.generate._schedulers import compatible_names, make_scheduler
from sdqueue.worker.generate._spec import (
    GeneratedImages,
    GenerationSpec,
    HiresPass,
    ImageGenerator,
    PreviewCallback,
    batch_key,
)
from sdqueue.worker.generate.families import Family, family_of_unet
from sdqueue.worker.generate.hotswap import LoraHotswap
from sdqueue.worker.generate.mixed_loras import distinct_loras, image_lora_names, per_image_loras

log = logging.getLogger(__name__)

# The environment (see _quiet) covers import time; these cover a process that imported the libraries earlier.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # transformers is partly annotated
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers is partly annotated

StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


def load_generator(source: str, *, runtime: RuntimeSettings) -> ImageGenerator:
    """Load a diffusers model (local folder or Hub id) for txt2img, img2img and inpaint on one set of weights;
    blocks."""
    apply_threads(runtime)
    device = resolve_device(runtime)
    dtype = resolve_dtype(runtime, device=device)
    text2img = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype)  # type: ignore[no-untyped-call]  # diffusers
    if getattr(text2img, "safety_checker", None) is not None:
        # It blacks out images silently (at random, on random weights); moderation belongs before the queue.
        text2img.safety_checker = None
    text2img.to(device)
    # Before the compile (apply_speed_options): the LoRA slot a compiled UNet swaps LoRAs into.
    hotswap = None
    if runtime.compile_mode != "off":
        hotswap = LoraHotswap.prepare(text2img, target_rank=runtime.lora_hotswap_rank, dtype=dtype)
    if device.type == "cpu" and runtime.compile_mode == "off":
        # A micro-batched image must be bit-equal to the same seed run alone. Not when compiled: dynamo cannot trace
        # the pinned oneDNN call, and the compiled graph chooses its own kernels.
        for component in text2img.components.values():
            if isinstance(component, torch.nn.Module):
                make_batch_invariant(component)
    apply_speed_options(text2img, runtime=runtime)
    img2img = AutoPipelineForImage2Image.from_pipe(text2img)
    inpaint = AutoPipelineForInpainting.from_pipe(text2img)
    budget_bytes = runtime.adapter_memory_mb * 1024 * 1024
    adapters = AdapterSlots(text2img, budget_bytes=budget_bytes, device=device, dtype=dtype, hotswap=hotswap)
    pipelines: dict[Mode, Any] = {"txt2img": text2img, "img2img": img2img, "inpaint": inpaint}
    return DiffusersGenerator(pipelines, device=device, adapters=adapters, mixed_loras=runtime.mixed_lora_batches)


def apply_speed_options(pipeline: Any, *, runtime: RuntimeSettings) -> None:
    """Switch on the configured memory and speed options; each is measured in docs/benchmarks.md."""
    if runtime.attention_slicing:
        pipeline.enable_attention_slicing()
    if runtime.channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    if runtime.fuse_qkv:
        pipeline.fuse_qkv_projections()
    if runtime.vae_slicing:
        pipeline.vae.enable_slicing()
    if runtime.vae_tiling:
        pipeline.vae.enable_tiling()
    if runtime.compile_mode != "off":
        pipeline.unet = torch.compile(pipeline.unet, mode=runtime.compile_mode)


def warm_up(generator: ImageGenerator, *, runtime: RuntimeSettings, batch_images: int = 1) -> None:
    """Run small generations so the first job pays no lazy initialisation or compile; blocks.

    A compiled UNet is specialised on the first batch size and recompiled with a dynamic batch at the second, so
    with batching on it is warmed at `batch_images` too: every later batch size then reuses that graph. On an
    H200 the two compiles took 53 s and 103 s (docs/benchmarks.md).
    """
    if runtime.warmup_steps == 0:
        return
    sizes = (1, batch_images) if runtime.compile_mode != "off" and batch_images > 1 else (1,)
    for images in sizes:
        generator.generate(_warm_up_spec(runtime, images=images))


def _warm_up_spec(runtime: RuntimeSettings, *, images: int) -> GenerationSpec:
    size = runtime.warmup_size_px
    return GenerationSpec(
        mode="txt2img",
        prompt="warm-up",
        negative_prompt="",
        width=size,
        height=size,
        steps=runtime.warmup_steps,
        guidance_scale=7.5,
        seeds=tuple(range(images)),
        scheduler=None,
        strength=0.75,
        init_image=None,
    )


class DiffusersGenerator:
    """An ImageGenerator over diffusers pipelines that share their modules."""

    def __init__(
        self, pipelines: dict[Mode, Any], *, device: torch.device, adapters: AdapterSlots, mixed_loras: bool = False
    ) -> None:
        for pipeline in pipelines.values():
            # from_pipe does not carry this setting over, so each pipeline gets it.
            pipeline.set_progress_bar_config(disable=True)
        self._pipelines = pipelines
        self._device = device
        self._adapters = adapters
        self._mixed_loras = mixed_loras
        # A compiled UNet still answers `.config` (torch's wrapper forwards attributes to the module).
        self._family = family_of_unet(pipelines["txt2img"].unet.config)
        self._own_scheduler = pipelines["txt2img"].scheduler
        self._scheduler_names = compatible_names(self._own_scheduler)

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return self._scheduler_names

    @property
    def family(self) -> Family:
        return self._family

    @property
    def memory_bytes(self) -> int:
        """Bytes of the weights and buffers of every module (both modes share them)."""
        modules = [m for m in self._pipelines["txt2img"].components.values() if isinstance(m, torch.nn.Module)]
        tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def release(self) -> None:
        """Drop the pipelines and give their device memory back; the generator is unusable afterwards."""
        self._pipelines.clear()
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> GeneratedImages:
        """Return `len(spec.seeds)` images; input images are first resized to width x height.

        Raises:
            InvalidRequest: unknown scheduler, no seeds, or img2img or inpaint without its images or with too few
                steps.
            Cancelled: `should_stop` returned true before the last step.
            OutOfMemory: the device ran out of memory.
            GenerationFailed: the pipeline rejected the input or produced non-finite pixels.
        """
        return self.generate_batch([spec], on_step=on_step, should_stop=should_stop, on_preview=on_preview)[0]

    def generate_batch(
        self,
        specs: Sequence[GenerationSpec],
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[GeneratedImages]:
        """Run specs that share a `batch_key` as one pipeline call (two with hires); the images come back split per
        spec, inpaint ones with the init image kept exactly where the mask is black.

        Raises:
            The errors of `generate`, for the batch as a whole.
        """
        first = specs[0]
        if any(self._key(spec) != self._key(first) for spec in specs):
            raise ValueError("a batch mixes specs with different batch keys")
        arguments = self._arguments(specs)
        # Before `_generate` counts the prompts' tokens: an embedding's token is one word only once it is bound.
        with self._use_adapters(specs):
            return self._generate(specs, arguments, on_step=on_step, should_stop=should_stop, on_preview=on_preview)

    def _generate(
        self,
        specs: Sequence[GenerationSpec],
        arguments: dict[str, Any],
        *,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        on_preview: PreviewCallback | None,
    ) -> list[GeneratedImages]:
        """The passes of `generate_batch`, once the batch's adapters are in place."""
        first = specs[0]
        pipeline = self._pipelines[first.mode]
        warnings = [_truncation_warnings(pipeline, spec) for spec in specs]
        hook = _StepHook(
            on_step=on_step,
            should_stop=should_stop or _never,
            previews=self._preview_tap(specs, on_preview),
            later_steps=_refine_steps(first.hires),
        )
        if hook.should_stop():
            raise Cancelled("generation was stopped before it started")
        images = self._pass(pipeline, arguments, hook=hook, scheduler=first.scheduler)
        if first.hires is not None:
            hook.next_pass(later_steps=0)
            images = self._refine(specs, images, hires=first.hires, hook=hook)
        if first.mode == "inpaint":
            images = _keep_unmasked(images, arguments, specs)
        return _split(images, specs, warnings)

    def _key(self, spec: GenerationSpec) -> tuple[object, ...]:
        """The spec's batch key as this generator batches (mixed LoRAs or not)."""
        return batch_key(spec, mixed_loras=self._mixed_loras)

    def _use_adapters(self, specs: Sequence[GenerationSpec]) -> AbstractContextManager[None]:
        """Activate the batch's adapters; the context returned routes each image through its own LoRA when the
        batch mixes LoRAs (`runtime.mixed_lora_batches`), and does nothing otherwise."""
        names = image_lora_names(specs) if self._mixed_loras else None
        if names is None:
            self._adapters.apply(specs[0].adapters)
            return nullcontext()
        self._adapters.apply(distinct_loras(specs))
        return per_image_loras(self._pipelines["txt2img"], names)

    def _pass(
        self, pipeline: Any, arguments: dict[str, Any], *, hook: _StepHook, scheduler: str | None
    ) -> list[Image.Image]:
        pipeline.scheduler = self._scheduler(scheduler)
        pixels = _run(pipeline, arguments, hook)
        if hook.is_stopped:
            raise Cancelled("generation was stopped before it finished")
        return _to_images(pixels)

    def _refine(
        self, specs: Sequence[GenerationSpec], images: list[Image.Image], *, hires: HiresPass, hook: _StepHook
    ) -> list[Image.Image]:
        """The hires pass: Lanczos to the final size, then img2img from the same seeds."""
        upscaled = [image.resize((hires.width, hires.height), Image.Resampling.LANCZOS) for image in images]
        arguments = self._common_arguments(specs, steps=hires.steps) | {"image": upscaled, "strength": hires.strength}
        return self._pass(self._pipelines["img2img"], arguments, hook=hook, scheduler=specs[0].scheduler)

    def _preview_tap(self, specs: Sequence[GenerationSpec], on_preview: PreviewCallback | None) -> PreviewTap | None:
        if on_preview is None or all(spec.preview_interval_s is None for spec in specs):
            return None
        return PreviewTap(specs, family=self._family, on_preview=on_preview)

    def _scheduler(self, name: str | None) -> Any:
        if name is not None and name not in self._scheduler_names:
            raise InvalidRequest(f"unknown scheduler {name!r}; this model offers: {', '.join(self._scheduler_names)}")
        # Schedulers keep per-run state (timesteps, step index, solver history), so each call gets its own.
        return make_scheduler(name, own=self._own_scheduler)

    def _arguments(self, specs: Sequence[GenerationSpec]) -> dict[str, Any]:
        if any(not spec.seeds for spec in specs):
            raise InvalidRequest("at least one seed (one image) is needed")
        first = specs[0]
        arguments = self._common_arguments(specs, steps=first.steps)
        size = {"width": first.width, "height": first.height}
        if first.mode == "txt2img":
            return arguments | size
        images = _per_image(specs, _init_image)
        if first.mode == "img2img":
            return arguments | {"image": images, "strength": first.strength}
        return (
            arguments
            | size
            | {"image": images, "mask_image": _per_image(specs, _mask_image), "strength": first.strength}
        )

    def _common_arguments(self, specs: Sequence[GenerationSpec], *, steps: int) -> dict[str, Any]:
        first = specs[0]
        negatives = [spec.negative_prompt for spec in specs for _ in spec.seeds]
        return {
            # One prompt and one generator per image: image i is computed from seeds[i] alone.
            "prompt": [spec.prompt for spec in specs for _ in spec.seeds],
            "negative_prompt": negatives if any(negatives) else None,
            "num_inference_steps": steps,
            "guidance_scale": first.guidance_scale,
            "num_images_per_prompt": 1,
            "generator": [torch.Generator(self._device).manual_seed(seed) for spec in specs for seed in spec.seeds],
            "output_type": "np",
        }


class _StepHook:
    """The pipeline's step-end callback: reports progress over every pass, offers the latents for previews, and
    raises the pipeline's interrupt flag on request."""

    def __init__(
        self, *, on_step: StepCallback | None, should_stop: StopCheck, previews: PreviewTap | None, later_steps: int
    ) -> None:
        self.on_step = on_step
        self.should_stop = should_stop
        self.previews = previews
        self.is_stopped = False
        self.done_before = 0  # steps of the passes already run
        self.later_steps = later_steps  # steps of the passes still to run
        self._pass_steps = 0

    def __call__(self, pipeline: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self._pass_steps = pipeline.num_timesteps
        done = self.done_before + step_index + 1
        total = self.done_before + pipeline.num_timesteps + self.later_steps
        if self.on_step is not None:
            self.on_step(done, total)
        if self.previews is not None:
            self.previews.offer(tensors["latents"], step=done, steps=total)
        # After the last step only decoding is left: finishing beats throwing the work away.
        if done < total and self.should_stop():
            # The pipeline skips the remaining steps, then decodes what it has; the caller discards that.
            pipeline._interrupt = True
            self.is_stopped = True
        return tensors

    def next_pass(self, *, later_steps: int) -> None:
        """Count the pass just run as done before the next one."""
        self.done_before += self._pass_steps
        self.later_steps = later_steps


def _never() -> bool:
    return False


def _refine_steps(hires: HiresPass | None) -> int:
    """The denoising steps of the hires pass, as img2img runs them (steps x strength)."""
    return 0 if hires is None else min(int(hires.steps * hires.strength), hires.steps)


def _per_image(specs: Sequence[GenerationSpec], prepare: Callable[[GenerationSpec], Image.Image]) -> list[Image.Image]:
    """One prepared input per image: a spec's input is prepared once and shared by its seeds."""
    return [image for spec in specs for image in [prepare(spec)] * len(spec.seeds)]


def _init_image(spec: GenerationSpec) -> Image.Image:
    if spec.init_image is None:
        raise InvalidRequest(f"{spec.mode} needs an init image")
    if int(spec.steps * spec.strength) < 1:
        raise InvalidRequest(f"{spec.mode} runs steps x strength denoising steps, which must be at least 1")
    return _to_output_size(spec.init_image.convert("RGB"), spec)


def _mask_image(spec: GenerationSpec) -> Image.Image:
    if spec.mask_image is None:
        raise InvalidRequest("inpaint needs a mask image")
    return _to_output_size(spec.mask_image.convert("L"), spec)


def _to_output_size(image: Image.Image, spec: GenerationSpec) -> Image.Image:
    # The pipeline takes its output size from the image (floored to a multiple of 8), so we set it here.
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    return image


def _keep_unmasked(
    images: list[Image.Image], arguments: dict[str, Any], specs: Sequence[GenerationSpec]
) -> list[Image.Image]:
    """Put the init image back where the mask is black, so those pixels are the input's exactly, not the VAE's
    round trip of them; `mask_blur_px` softens the seam."""
    blurs_px = [spec.mask_blur_px for spec in specs for _ in spec.seeds]
    return [
        Image.composite(image, init, mask.filter(ImageFilter.GaussianBlur(blur_px)) if blur_px else mask)
        for image, init, mask, blur_px in zip(
            images, arguments["image"], arguments["mask_image"], blurs_px, strict=True
        )
    ]


def _truncation_warnings(pipeline: Any, spec: GenerationSpec) -> list[str]:
    tokenizer = getattr(pipeline, "tokenizer", None)
    if tokenizer is None:
        return []
    limit = tokenizer.model_max_length
    texts = {"prompt": spec.prompt, "negative prompt": spec.negative_prompt}
    return [
        f"{label} truncated to {limit} tokens"
        for label, text in texts.items()
        if len(tokenizer(text, truncation=False, verbose=False).input_ids) > limit
    ]


def _run(pipeline: Any, arguments: dict[str, Any], hook: _StepHook) -> npt.NDArray[np.float32]:
    try:
        output = pipeline(**arguments, callback_on_step_end=hook)
    except torch.OutOfMemoryError as exc:
        _release_cached_memory()
        raise OutOfMemory("the device ran out of memory; try fewer or smaller images") from exc
    except ValueError as exc:
        log.warning("pipeline rejected its input: %s", exc)
        raise GenerationFailed("the pipeline rejected these parameters") from exc
    pixels: npt.NDArray[np.float32] = output.images
    return pixels


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _split(
    images: list[Image.Image], specs: Sequence[GenerationSpec], warnings: list[list[str]]
) -> list[GeneratedImages]:
    results, start = [], 0
    for spec, spec_warnings in zip(specs, warnings, strict=True):
        results.append(GeneratedImages(images=images[start : start + len(spec.seeds)], warnings=spec_warnings))
        start += len(spec.seeds)
    return results


def _to_images(pixels: npt.NDArray[np.float32]) -> list[Image.Image]:
    if not np.isfinite(pixels).all():
        raise GenerationFailed("the model produced non-finite pixels (NaN or infinity)")
    array = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(image) for image in array]
