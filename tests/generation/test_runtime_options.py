"""The speed and memory switches of RuntimeSettings load and generate on the real tiny pipeline (CPU).

They change the arithmetic order, so images may move by a few levels; they must not change what is drawn.
torch.compile is exercised on CUDA only (marked gpu): on this CPU it compiles for minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdqueue.config import RuntimeSettings
from sdqueue.worker.generate import GenerationSpec, ImageGenerator, load_generator, warm_up
from tests.generation.specs import spec

pytestmark = pytest.mark.slow  # runs the tiny model on CPU: seconds, and many more on a loaded machine

SPEC = spec(prompt="a lighthouse", width=96, seeds=(5, 6))
BASE = RuntimeSettings(device="cpu", threads=2, warmup_steps=0)


def _pixels(source: Path, runtime: RuntimeSettings) -> np.ndarray:
    images = load_generator(str(source), runtime=runtime).generate(SPEC).images
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.fixture(scope="module")
def baseline(tiny_model_dir: Path) -> np.ndarray:
    return _pixels(tiny_model_dir, BASE)


@pytest.mark.parametrize("option", ["channels_last", "fuse_qkv", "vae_slicing", "vae_tiling", "attention_slicing"])
def test_option_keeps_the_picture(option: str, tiny_model_dir: Path, baseline: np.ndarray):
    pixels = _pixels(tiny_model_dir, BASE.model_copy(update={option: True}))

    assert pixels.shape == baseline.shape == (2, 64, 96, 3)
    assert np.abs(pixels - baseline).max() <= 4
    assert np.abs(pixels - baseline).mean() < 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_unet_keeps_the_picture_on_cuda(tiny_model_dir: Path):
    cuda = RuntimeSettings(device="cuda", dtype="float16", warmup_steps=0)
    plain = _pixels(tiny_model_dir, cuda)
    compiled = _pixels(tiny_model_dir, cuda.model_copy(update={"compile_mode": "default", "channels_last": True}))

    assert np.abs(plain - compiled).mean() < 2.0


@pytest.mark.parametrize(("compile_mode", "expected"), [("off", [1]), ("default", [1, 3])])
def test_warm_up_covers_the_batched_shape_only_when_compiled(
    compile_mode: str, expected: list[int], tiny_generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
):
    # warm_up only chooses the shapes, so the real (uncompiled) tiny generator shows which calls it makes.
    batches: list[int] = []
    generate = tiny_generator.generate

    def recording(spec: GenerationSpec, **kwargs: object) -> object:
        batches.append(len(spec.seeds))
        return generate(spec)

    monkeypatch.setattr(tiny_generator, "generate", recording)
    runtime = BASE.model_copy(update={"compile_mode": compile_mode, "warmup_steps": 1, "warmup_size_px": 64})

    warm_up(tiny_generator, runtime=runtime, batch_images=3)

    assert batches == expected
