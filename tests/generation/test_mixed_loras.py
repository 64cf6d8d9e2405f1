"""Mixed-LoRA batches on the real tiny pipeline (CPU): jobs with one LoRA each share one call when
`runtime.mixed_lora_batches` is on, and every image is bit-equal to the same job run alone with its LoRA."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from torch import nn

from sdqueue.config import BatchSettings, RuntimeSettings
from sdqueue.worker.batching import Batcher
from sdqueue.worker.generate import (
    AdapterFile,
    GeneratedImages,
    GenerationSpec,
    HiresPass,
    ImageGenerator,
    batch_key,
    load_generator,
)
from sdqueue.worker.generate.tiny_adapters import build_tiny_lora
from tests.generation import specs as base_specs
from tests.generation.test_batching import RecordingGenerator
from tests.plugins.tiny_model import TEST_RUNTIME

pytestmark = pytest.mark.slow  # runs the tiny model on CPU


def _file(path: Path, *, scale: float = 0.8) -> AdapterFile:
    data = path.read_bytes()
    return AdapterFile(sha256=hashlib.sha256(data).hexdigest(), kind="lora", scale=scale, token=None, data=data)


def _spec(prompt: str, seed: int, adapters: tuple[AdapterFile, ...] = (), **changes: object) -> GenerationSpec:
    fields: dict[str, object] = {"prompt": prompt, "seeds": (seed,), "adapters": adapters, **changes}
    return base_specs.spec(base_specs.TXT2IMG, **fields)


def _pixels(generator: ImageGenerator, spec: GenerationSpec) -> list[np.ndarray]:
    return [np.asarray(image) for image in generator.generate(spec).images]


@pytest.fixture(scope="module")
def mixed_generator(tiny_model_dir: Path) -> ImageGenerator:
    """A tiny model of this module's own (LoRA layers never reach the shared one), mixing LoRAs in its batches."""
    return load_generator(str(tiny_model_dir), runtime=TEST_RUNTIME.model_copy(update={"mixed_lora_batches": True}))


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterFile]:
    folder = tmp_path_factory.mktemp("mixed-loras")
    return [_file(build_tiny_lora(tiny_model_dir, folder / f"lora-{seed}.safetensors", seed=seed)) for seed in range(3)]


def test_jobs_with_one_lora_each_share_a_key_only_when_mixing_and_at_one_scale(loras):
    first, second = _spec("a", 1, (loras[0],)), _spec("b", 2, (loras[1],))
    other_scale = _spec("c", 3, (dataclasses.replace(loras[1], scale=0.5),))
    two_loras = _spec("d", 4, (loras[0], loras[1]))

    assert batch_key(first) != batch_key(second)
    assert batch_key(first, mixed_loras=True) == batch_key(second, mixed_loras=True)
    assert batch_key(first, mixed_loras=True) != batch_key(other_scale, mixed_loras=True)
    assert batch_key(two_loras, mixed_loras=True) == batch_key(two_loras)
    assert batch_key(_spec("e", 5), mixed_loras=True) == batch_key(_spec("e", 5))


def test_mixed_lora_batches_are_refused_with_a_compiled_unet():
    with pytest.raises(ValidationError, match="compile_mode"):
        RuntimeSettings(mixed_lora_batches=True, compile_mode="default")


def test_a_mixed_batch_equals_lone_runs_of_each_job_with_its_lora(mixed_generator, loras):
    specs = [
        _spec("a fox", 1, (loras[0],), seeds=(1, 2)),
        _spec("a cat", 3, (loras[1],)),
        _spec("a dog", 4, (loras[2],)),
        _spec("a fox", 5, (loras[0],)),
    ]

    batched = [[np.asarray(image) for image in result.images] for result in mixed_generator.generate_batch(specs)]
    lone = [_pixels(mixed_generator, spec) for spec in specs]

    for alone, together in zip(lone, batched, strict=True):
        assert len(alone) == len(together)
        assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))
    # Each job's own LoRA made its picture: the same seed and prompt under another LoRA differ.
    assert not np.array_equal(
        lone[1][0], _pixels(mixed_generator, dataclasses.replace(specs[1], adapters=(loras[2],)))[0]
    )


def test_a_mixed_batch_of_loras_with_text_encoder_layers_equals_lone_runs(mixed_generator, tiny_model_dir, tmp_path):
    # The text encoders see one row per image, the UNet two (uncond, cond): both are routed per image.
    with_text = [
        _file(build_tiny_lora(tiny_model_dir, tmp_path / f"te-{seed}.safetensors", seed=10 + seed, text_encoder=True))
        for seed in range(2)
    ]
    specs = [_spec("a fox", 1, (with_text[0],)), _spec("a cat", 2, (with_text[1],)), _spec("a dog", 3, (with_text[0],))]

    batched = mixed_generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        assert np.array_equal(_pixels(mixed_generator, spec)[0], np.asarray(result.images[0]))


def test_a_mixed_hires_batch_equals_lone_runs_through_both_passes(mixed_generator, loras):
    hires = HiresPass(width=96, height=96, steps=3, strength=0.5)
    specs = [_spec("a fox", 1, (loras[0],), hires=hires), _spec("a cat", 2, (loras[1],), hires=hires)]

    batched = mixed_generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        assert np.array_equal(_pixels(mixed_generator, spec)[0], np.asarray(result.images[0]))


def test_after_a_mixed_batch_no_routing_is_left_on_the_lora_layers(mixed_generator, loras):
    plain = _spec("a fox", 1)
    before = _pixels(mixed_generator, plain)[0]

    mixed_generator.generate_batch([_spec("a", 1, (loras[0],)), _spec("b", 2, (loras[1],))])

    modules: list[nn.Module] = list(mixed_generator._pipelines["txt2img"].unet.modules())
    layers = [layer for layer in modules if isinstance(layer, LoraLayer)]
    assert layers
    assert not any(layer._forward_pre_hooks for layer in modules)
    assert np.array_equal(before, _pixels(mixed_generator, plain)[0])


async def _run_batcher(
    generator: ImageGenerator, specs: list[GenerationSpec], *, max_images: int
) -> list[GeneratedImages]:
    batcher = Batcher(
        generator,
        executor=ThreadPoolExecutor(max_workers=1),
        batching=BatchSettings(max_images=max_images, max_wait_s=0.2),
        mixed_loras=True,
    )
    runner = asyncio.create_task(batcher.run())
    try:
        jobs = [batcher.generate(spec, on_step=lambda *_: None, should_stop=lambda: False) for spec in specs]
        return list(await asyncio.gather(*jobs))
    finally:
        runner.cancel()


async def test_the_batcher_puts_jobs_of_different_loras_into_one_call_when_mixing(mixed_generator, loras):
    specs = [_spec(f"prompt {i}", 10 + i, (loras[i],)) for i in range(3)]
    recording = RecordingGenerator(mixed_generator)

    results = await _run_batcher(recording, specs, max_images=8)

    assert recording.calls == [["prompt 0", "prompt 1", "prompt 2"]]
    for spec, result in zip(specs, results, strict=True):
        assert np.array_equal(_pixels(mixed_generator, spec)[0], np.asarray(result.images[0]))


async def test_the_batcher_fills_a_mixed_batch_with_jobs_of_the_first_jobs_lora_first(mixed_generator, loras):
    specs = [_spec("a0", 1, (loras[0],)), _spec("b", 2, (loras[1],)), _spec("a1", 3, (loras[0],))]
    recording = RecordingGenerator(mixed_generator)

    await _run_batcher(recording, specs, max_images=2)

    assert recording.calls == [["a0", "a1"], ["b"]]
