"""Randomly initialised, seeded Stable Diffusion pipelines (SD 1 and SDXL shapes) small enough for tests and
offline development."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_TOKENS = 77
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
# A handful of merges so that common words become single tokens; the rest falls back to bytes.
_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "e r</w>", "c a", "ca t</w>")
# SD 1.5's scheduler settings: `clip_sample` and `set_alpha_to_one` are kept for the DDIM swap.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}
# SDXL base's scheduler (Euler, leading timesteps) on the same noise schedule.
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
}
SDXL_VAE_SCALING_FACTOR = 0.13025
# SDXL conditions on six size and crop numbers, each embedded at this width; 6 x 32 keeps each image's activation a
# multiple of 32 floats (see _invariant on elementwise tails).
_TINY_SDXL_TIME_EMBED_DIM = 32
_TINY_TEXT_WIDTH = 32
TinyFamily = Literal["sd1", "sdxl"]


def build_tiny_model(path: Path, *, seed: int = 0, family: TinyFamily = "sd1") -> Path:
    """Build the tiny model of `family` into `path` (created or overwritten) in diffusers format and return `path`.

    The same seed gives byte-identical weights.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path / "tokenizer")
    # Modules draw their initial weights from torch's global generator; fork it so the caller's stays as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "sdxl":
            return _build_tiny_sdxl(path, tokenizer=tokenizer)
        vae, text_encoder, unet = _build_vae(), CLIPTextModel(_text_config(tokenizer)), _build_unet()
    return save_pipeline(path, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def _build_tiny_sdxl(path: Path, *, tokenizer: CLIPTokenizer) -> Path:
    vae = _build_vae(scaling_factor=SDXL_VAE_SCALING_FACTOR)
    text_encoders = (CLIPTextModel(_text_config(tokenizer)), CLIPTextModelWithProjection(_text_config(tokenizer)))
    # The UNet attends to both encoders' states side by side and adds the second one's pooled projection.
    unet = _build_sdxl_unet(text_width=2 * _TINY_TEXT_WIDTH, pooled_width=_TINY_TEXT_WIDTH)
    return save_sdxl_pipeline(path, unet=unet, vae=vae, text_encoders=text_encoders, tokenizer=tokenizer)


def save_pipeline(
    path: Path,
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
) -> Path:
    """Save the modules as an SD pipeline with SD 1.5's scheduler, in diffusers format, readable by all."""
    pipe = StableDiffusionPipeline(  # type: ignore[no-untyped-call]  # diffusers is partly annotated
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),  # type: ignore[no-untyped-call]  # diffusers
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)  # type: ignore[attr-defined]  # diffusers' lazy module
    make_readable(path)
    return path


def save_sdxl_pipeline(
    path: Path,
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection],
    tokenizer: CLIPTokenizer,
) -> Path:
    """Save the modules as an SDXL pipeline with SDXL's scheduler, one tokenizer serving both encoders."""
    pipe = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]  # diffusers is partly annotated
        vae=vae,
        text_encoder=text_encoders[0],
        text_encoder_2=text_encoders[1],
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),  # type: ignore[no-untyped-call]
    )
    pipe.save_pretrained(path, safe_serialization=True)  # type: ignore[attr-defined]  # diffusers' lazy module
    make_readable(path)
    return path


def ensure_tiny_model(path: Path) -> Path:
    """Return `path`, building the tiny model there first if it is missing.

    The model is built in a temporary sibling and renamed into place, so a crash or a concurrent
    builder never leaves a half-written model behind.
    """
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build_tiny_model(staging)
        staging.chmod(0o755)
        staging.rename(path)
    except OSError:
        # Another process won the race: its model is complete, because it was renamed into place.
        if not (path / "model_index.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write a byte-level CLIP vocabulary and merges to `folder` and load the tokenizer from there."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_byte_symbols())
    tokens = symbols + [f"{symbol}</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in _MERGES]
    tokens += [_BOS, _EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)
    return tokenizer


def _byte_symbols() -> list[str]:
    """The 256 printable characters that byte-level BPE maps bytes to (as in GPT-2 and CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TINY_TEXT_WIDTH,
        intermediate_size=64,  # a multiple of 32: see _invariant on elementwise tails
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=_TINY_TEXT_WIDTH,
    )


def _build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]  # diffusers is partly annotated
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _build_sdxl_unet(*, text_width: int, pooled_width: int) -> UNet2DConditionModel:
    """SDXL's UNet at tiny size: cross-attention over `text_width`, plus pooled text and six time ids added."""
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]  # diffusers is partly annotated
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TINY_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _TINY_SDXL_TIME_EMBED_DIM + pooled_width,
    )


def _build_vae(*, scaling_factor: float = 0.18215) -> AutoencoderKL:
    return AutoencoderKL(  # type: ignore[no-untyped-call]  # diffusers is partly annotated
        block_out_channels=(32, 32, 64, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=scaling_factor,
    )


def make_readable(path: Path) -> None:
    """Give every saved file mode 0644."""
    # safetensors writes 0600; the model is shared by whoever runs the worker.
    for root, _dirs, files in os.walk(path):
        for name in files:
            Path(root, name).chmod(0o644)
