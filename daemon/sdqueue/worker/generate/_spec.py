"""What a generation needs and gives back, and the interface the worker drives. No torch here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from sdqueue.contracts import AdapterKind, Mode
from sdqueue.worker.generate.families import Family


@dataclass(frozen=True, kw_only=True)
class HiresPass:
    """The txt2img hires fix: upscale to width x height (Lanczos), then refine with img2img from the same seeds."""

    width: int
    height: int
    steps: int
    strength: float


@dataclass(frozen=True, kw_only=True)
class AdapterFile:
    """An adapter file whose sha256 and format were checked, with how the job applies it."""

    sha256: str
    kind: AdapterKind
    scale: float
    token: str | None
    data: bytes = field(repr=False)

    @property
    def is_active(self) -> bool:
        """Whether it changes the images: a LoRA at scale 0 is left out altogether, not applied at weight 0."""
        return self.kind != "lora" or self.scale != 0


@dataclass(frozen=True, kw_only=True)
class GenerationSpec:
    """One call's worth of work: `len(seeds)` images of one prompt.

    Inpaint repaints where `mask_image` is white and keeps the init image's pixels where it is black.
    `preview_interval_s` asks for previews at most that often; None asks for none.
    """

    mode: Mode
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    scheduler: str | None
    strength: float
    init_image: Image.Image | None
    mask_image: Image.Image | None = None
    mask_blur_px: int = 0
    hires: HiresPass | None = None
    preview_interval_s: float | None = None
    adapters: tuple[AdapterFile, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StepPreview:
    """A rough picture of one spec's images after `step` of `steps` (both passes counted for hires)."""

    step: int
    steps: int
    image: Image.Image


# Called on the generation thread with the spec's index in the batch and its preview.
PreviewCallback = Callable[[int, StepPreview], None]
BatchKey = tuple[object, ...]


def batch_key(spec: GenerationSpec, *, mixed_loras: bool = False) -> BatchKey:
    """Specs with equal keys can share one pipeline call: everything but prompts, seeds, input images, mask blur and
    previews matches, and so does the set of active adapters with their scales. With `mixed_loras`, specs with one
    LoRA each and nothing else share a key whichever LoRA it is, as long as the scale is the same (mixed_loras.py)."""
    strength = spec.strength if spec.mode != "txt2img" else None
    lora = single_lora(spec) if mixed_loras else None
    adapters = ("one LoRA per job", lora.scale) if lora is not None else adapter_set(spec)
    return (
        spec.mode,
        spec.width,
        spec.height,
        spec.steps,
        spec.guidance_scale,
        spec.scheduler,
        strength,
        spec.hires,
        adapters,
    )


def adapter_set(spec: GenerationSpec) -> frozenset[tuple[str, str, float, str | None]]:
    """The adapters a spec runs with, as (sha256, kind, scale, token); LoRAs at scale 0 are not among them."""
    return frozenset((a.sha256, a.kind, a.scale, a.token) for a in spec.adapters if a.is_active)


def single_lora(spec: GenerationSpec) -> AdapterFile | None:
    """The spec's LoRA when it is its one active adapter (what a mixed batch can route per image); else None."""
    active = [adapter for adapter in spec.adapters if adapter.is_active]
    return active[0] if len(active) == 1 and active[0].kind == "lora" else None


@dataclass(frozen=True)
class GeneratedImages:
    """The images of one call, in seed order, and what the requester should know about them."""

    images: list[Image.Image]
    warnings: list[str]


class ImageGenerator(Protocol):
    """A loaded model. Not thread-safe: call it from one thread only."""

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """The scheduler names `generate` accepts besides None (the model's own)."""
        ...

    @property
    def memory_bytes(self) -> int:
        """Bytes its weights take on the device; what the model memory budget counts."""
        ...

    @property
    def family(self) -> Family:
        """The model's family (known from its pipeline): its defaults and latent preview factors."""
        ...

    def release(self) -> None:
        """Free the model's memory; the generator is not used again."""
        ...

    def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> GeneratedImages:
        """Run the pipeline and return the images; blocks. Previews go to `on_preview` as the spec asks.

        Raises:
            InvalidRequest: unknown scheduler, no seeds, or img2img or inpaint without its images or with too few
                steps.
            Cancelled: `should_stop` returned true before the last step.
            OutOfMemory: the device ran out of memory.
            GenerationFailed: the pipeline rejected the input or produced non-finite pixels.
        """
        ...

    def generate_batch(
        self,
        specs: Sequence[GenerationSpec],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[GeneratedImages]:
        """Run specs with one `batch_key` as one pipeline call (one generator per image); results in spec order.
        Each spec's previews show its own images only.

        Raises:
            The errors of `generate`, for the batch as a whole.
        """
        ...
