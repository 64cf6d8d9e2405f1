"""The tiny SDXL model through the real generator on CPU: built offline, loaded through from_pretrained, recognised
as SDXL, and holding every guarantee the SD 1 shape does (sizes, seeds, img2img, progress, cancel, batching)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from sdqueue.contracts.errors import Cancelled
from sdqueue.worker.generate import ImageGenerator, build_tiny_model
from sdqueue.worker.generate.families import SD1, SDXL
from sdqueue.worker.generate.sdxl import sdxl_modules
from tests.generation.specs import INIT_IMAGE
from tests.generation.specs import spec as _spec

pytestmark = pytest.mark.slow  # runs the tiny models on CPU: seconds, and many more on a loaded machine

TXT2IMG = _spec(steps=4, guidance_scale=5.0)
IMG2IMG = _spec(TXT2IMG, mode="img2img", steps=6, strength=0.5, init_image=INIT_IMAGE)
# Published sizes of SDXL 1.0 base: UNet 2.567B, VAE 83.65M, CLIP ViT-L/14 123.06M, OpenCLIP ViT-bigG/14 694.66M.
EXPECTED_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def _same_picture(first: Image.Image, second: Image.Image) -> bool:
    return np.array_equal(np.asarray(first), np.asarray(second))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_tiny_sdxl_is_saved_as_an_sdxl_pipeline(tiny_sdxl_dir: Path):
    index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    unet = json.loads((tiny_sdxl_dir / "unet" / "config.json").read_text())

    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert (index["tokenizer"][1], index["tokenizer_2"][1]) == ("CLIPTokenizer", "CLIPTokenizer")
    assert unet["addition_embed_type"] == "text_time"
    assert unet["cross_attention_dim"] == 64, "both encoders' states, side by side"
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + 32


def test_the_cli_builds_the_same_files_for_the_same_seed(tmp_path: Path, tiny_sdxl_dir: Path):
    command = [sys.executable, "-m", "sdqueue", "model", "tiny", "--family", "sdxl", str(tmp_path / "xl")]
    subprocess.run(command, check=True, capture_output=True, timeout=120)

    expected = _files(tiny_sdxl_dir)
    other_seed = _files(build_tiny_model(tmp_path / "other", family="sdxl", seed=1))
    assert _files(tmp_path / "xl") == expected
    unet_weights = "unet/diffusion_pytorch_model.safetensors"
    assert other_seed[unet_weights] != expected[unet_weights]


def test_it_loads_through_from_pretrained_and_is_recognised_as_sdxl(
    tiny_sdxl_dir: Path, tiny_sdxl_generator: ImageGenerator, tiny_generator: ImageGenerator
):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sdxl_dir)  # type: ignore[no-untyped-call]  # diffusers

    assert isinstance(pipeline, StableDiffusionXLPipeline)
    assert tiny_sdxl_generator.family is SDXL
    assert tiny_generator.family is SD1


def test_txt2img_gives_one_image_per_seed_at_the_requested_size(tiny_sdxl_generator: ImageGenerator):
    result = tiny_sdxl_generator.generate(_spec(width=96, height=64, seeds=(1, 2, 3)))
    again = tiny_sdxl_generator.generate(_spec(width=96, height=64, seeds=(2,)))

    assert [image.size for image in result.images] == [(96, 64)] * 3
    assert not _same_picture(result.images[0], result.images[1])
    assert _same_picture(result.images[1], again.images[0])
    assert result.warnings == []


def test_img2img_resizes_and_follows_the_init_image(tiny_sdxl_generator: ImageGenerator):
    red = tiny_sdxl_generator.generate(_spec(IMG2IMG, width=128, height=64))
    blue = tiny_sdxl_generator.generate(
        _spec(IMG2IMG, width=128, height=64, init_image=Image.new("RGB", (100, 70), (30, 40, 220)))
    )

    assert red.images[0].size == (128, 64)
    assert not _same_picture(red.images[0], blue.images[0])
    # Half strength keeps the init image's colour: red stays redder than blue.
    assert np.asarray(red.images[0])[..., 0].mean() > np.asarray(blue.images[0])[..., 0].mean()


def test_progress_counts_every_step(tiny_sdxl_generator: ImageGenerator):
    steps: list[tuple[int, int]] = []
    tiny_sdxl_generator.generate(_spec(IMG2IMG), on_step=lambda done, of: steps.append((done, of)))
    assert steps == [(done, 3) for done in range(1, 4)]


def test_stop_request_interrupts_the_pipeline_and_cancels(tiny_sdxl_generator: ImageGenerator):
    steps: list[int] = []
    with pytest.raises(Cancelled):
        tiny_sdxl_generator.generate(
            _spec(steps=6), on_step=lambda done, _total: steps.append(done), should_stop=lambda: bool(steps)
        )
    assert steps == [1]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        # Without guidance a lone run calls the UNet (and its added text-time embedding) at batch 1.
        {"guidance_scale": 1.0},
        {"width": 128, "height": 96},
        {"mode": "img2img", "init_image": INIT_IMAGE, "strength": 0.5, "steps": 6},
    ],
    ids=["txt2img", "no-guidance", "128x96", "img2img"],
)
def test_batch_matches_lone_runs_bit_for_bit(tiny_sdxl_generator: ImageGenerator, changes: dict[str, object]):
    specs = [_spec(TXT2IMG, prompt=f"prompt {i}", seeds=(seed,), **changes) for i, seed in enumerate(range(21, 29))]

    batched = tiny_sdxl_generator.generate_batch(specs)

    for spec, result in zip(specs, batched, strict=True):
        assert _same_picture(tiny_sdxl_generator.generate(spec).images[0], result.images[0])


def test_full_sdxl_modules_have_the_published_parameter_counts():
    with torch.device("meta"):
        unet, vae, text_encoder, text_encoder_2 = sdxl_modules()

    modules: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    counts = {name: sum(parameter.numel() for parameter in module.parameters()) for name, module in modules.items()}

    assert counts == EXPECTED_PARAMETERS
