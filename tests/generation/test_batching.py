"""Micro-batching on the real tiny pipeline: compatible jobs share one call and get the images they would alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdqueue.config import BatchSettings, RuntimeSettings
from sdqueue.contracts.errors import GenerationFailed
from sdqueue.worker.batching import Batcher
from sdqueue.worker.generate import Family, GeneratedImages, GenerationSpec, ImageGenerator, StepPreview

pytestmark = pytest.mark.slow  # runs the tiny model on CPU: seconds, and many more on a loaded machine

# On CPU the generator pins the kernels that torch would pick by batch size (sdqueue.worker.generate._invariant),
# so a batched image is bit-equal to a lone run; see docs/benchmarks.md.
INIT_IMAGE = Image.new("RGB", (100, 70), (200, 40, 40))


def _spec(prompt: str, seed: int, **changes: object) -> GenerationSpec:
    fields: dict[str, object] = {
        "mode": "txt2img",
        "prompt": prompt,
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.5,
        "seeds": (seed,),
        "scheduler": None,
        "strength": 0.75,
        "init_image": None,
        **changes,
    }
    return GenerationSpec(**fields)  # type: ignore[arg-type]


def _assert_same_picture(alone: Image.Image, batched: Image.Image) -> None:
    assert np.array_equal(np.asarray(alone), np.asarray(batched))


class RecordingGenerator:
    """The real tiny generator, recording each call's batch size; optionally failing batches with a poison prompt.

    Only the failure is made up (no real input makes a whole batch fail on demand); the images are real.
    """

    def __init__(self, real: ImageGenerator, *, poison: str | None = None) -> None:
        self.real, self.poison, self.calls = real, poison, []  # type: ignore[var-annotated]

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return self.real.scheduler_names

    @property
    def memory_bytes(self) -> int:
        return self.real.memory_bytes

    @property
    def family(self) -> Family:
        return self.real.family

    def release(self) -> None:
        self.real.release()

    def generate(self, spec: GenerationSpec, **hooks: Callable[..., object] | None) -> GeneratedImages:
        return self.generate_batch([spec], **hooks)[0]

    def generate_batch(self, specs: Sequence[GenerationSpec], **hooks: object) -> list[GeneratedImages]:
        self.calls.append([spec.prompt for spec in specs])
        if self.poison and any(self.poison in spec.prompt for spec in specs):
            raise GenerationFailed("poisoned prompt in this batch")
        return self.real.generate_batch(specs, **hooks)  # type: ignore[arg-type]


async def _run_jobs(
    generator: RecordingGenerator, specs: list[GenerationSpec], **batching: int | float
) -> list[GeneratedImages | BaseException]:
    batcher = Batcher(generator, executor=ThreadPoolExecutor(max_workers=1), batching=BatchSettings(**batching))
    runner = asyncio.create_task(batcher.run())
    try:
        jobs = [batcher.generate(spec, on_step=lambda *_: None, should_stop=lambda: False) for spec in specs]
        return await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        runner.cancel()


async def test_compatible_jobs_share_one_call_and_match_lone_runs(tiny_generator: ImageGenerator):
    specs = [_spec(f"prompt {i}", seed=100 + i, seeds=(100 + i, 200 + i)) for i in range(3)]
    recording = RecordingGenerator(tiny_generator)

    results = await _run_jobs(recording, specs, max_images=8, max_wait_s=0.2)

    assert recording.calls == [["prompt 0", "prompt 1", "prompt 2"]]
    for spec, result in zip(specs, results, strict=True):
        alone = tiny_generator.generate(spec)
        assert isinstance(result, GeneratedImages)
        assert len(result.images) == 2
        for lone_image, batched_image in zip(alone.images, result.images, strict=True):
            _assert_same_picture(lone_image, batched_image)


async def test_jobs_with_and_without_previews_share_a_batch_and_each_previews_only_its_own_images(
    tiny_generator: ImageGenerator,
):
    specs = [
        _spec("two with previews", 1, seeds=(1, 2), preview_interval_s=60),
        _spec("none", 3),
        _spec("one with previews", 4, preview_interval_s=60),
    ]
    recording = RecordingGenerator(tiny_generator)
    batcher = Batcher(recording, executor=ThreadPoolExecutor(max_workers=1), batching=BatchSettings(max_wait_s=0.2))
    runner = asyncio.create_task(batcher.run())
    previews: list[list[StepPreview]] = [[], [], []]
    try:
        await asyncio.gather(
            *(
                batcher.generate(spec, on_step=lambda *_: None, should_stop=lambda: False, on_preview=seen.append)
                for spec, seen in zip(specs, previews, strict=True)
            )
        )
    finally:
        runner.cancel()

    assert recording.calls == [["two with previews", "none", "one with previews"]]
    # One preview each (the first step; the interval never passes): a 2-image grid, none, one 8x8 latent picture.
    assert [[preview.image.size for preview in seen] for seen in previews] == [[(16, 8)], [], [(8, 8)]]


async def test_incompatible_jobs_and_budget_split_batches(tiny_generator: ImageGenerator):
    specs = [_spec("a", 1), _spec("b", 2, steps=5), _spec("c", 3), _spec("d", 4), _spec("e", 5)]
    recording = RecordingGenerator(tiny_generator)

    await _run_jobs(recording, specs, max_images=2, max_wait_s=0.2)

    assert sorted(map(sorted, recording.calls)) == [["a", "c"], ["b"], ["d", "e"]]


async def test_a_failing_batch_is_retried_job_by_job(tiny_generator: ImageGenerator):
    specs = [_spec("fine one", 1), _spec("POISON", 2), _spec("fine two", 3)]
    recording = RecordingGenerator(tiny_generator, poison="POISON")

    results = await _run_jobs(recording, specs, max_images=8, max_wait_s=0.2)

    assert recording.calls[0] == ["fine one", "POISON", "fine two"]
    assert recording.calls[1:] == [["fine one"], ["POISON"], ["fine two"]]
    assert isinstance(results[1], GenerationFailed)
    assert all(isinstance(result, GeneratedImages) for result in (results[0], results[2]))


@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpmpp_2m"])
def test_batch_of_seeds_matches_lone_runs_per_scheduler(tiny_generator: ImageGenerator, scheduler: str | None):
    specs = [_spec("a lighthouse", seed, scheduler=scheduler) for seed in (7, 8, 9, 10)]

    batched = tiny_generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        _assert_same_picture(tiny_generator.generate(spec).images[0], result.images[0])


@pytest.mark.parametrize(
    "changes",
    [
        # Without guidance a lone run calls the UNet at batch 1, where torch would pick other convolution kernels.
        {"guidance_scale": 1.0},
        # The VAE's layers fall on both sides of torch's oneDNN threshold, and its group norms reach 32x32 and more.
        {"width": 128, "height": 96},
        {"mode": "img2img", "init_image": INIT_IMAGE, "strength": 0.5, "steps": 6},
    ],
    ids=["no-guidance", "128x96", "img2img"],
)
def test_batch_matches_lone_runs_bit_for_bit(tiny_generator: ImageGenerator, changes: dict[str, object]):
    specs = [_spec(f"prompt {i}", seed, **changes) for i, seed in enumerate((11, 12, 13, 14, 15, 16, 17, 18))]

    batched = tiny_generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        _assert_same_picture(tiny_generator.generate(spec).images[0], result.images[0])


# On CUDA (float16) cuBLAS and cuDNN also pick kernels by shape, and nothing pins them: a batched image is held to
# the stated tolerance below instead of bit-equality (docs/benchmarks.md). No CUDA device has run this yet.
CUDA_MEAN_LEVEL_TOLERANCE = 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_images_stay_within_the_stated_tolerance_on_cuda(tiny_model_dir: Path):
    from sdqueue.worker.generate import load_generator

    generator = load_generator(str(tiny_model_dir), runtime=RuntimeSettings(device="cuda", dtype="auto"))
    specs = [_spec("a lighthouse", seed, width=128, height=128, steps=20) for seed in range(8)]

    batched = generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        alone = np.asarray(generator.generate(spec).images[0], dtype=np.float64)
        assert np.abs(alone - np.asarray(result.images[0], dtype=np.float64)).mean() <= CUDA_MEAN_LEVEL_TOLERANCE
