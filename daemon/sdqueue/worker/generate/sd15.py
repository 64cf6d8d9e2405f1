"""The full Stable Diffusion 1.5 architecture with random weights: real costs for GPU benchmarks, no download.

The configs are the published SD 1.5 ones (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M parameters).
The tokenizer is the tiny model's byte-level one with SD's vocabulary size, so prompts cost what real ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdqueue.worker.generate.tiny import build_tokenizer, save_pipeline

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
}
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def sd15_modules() -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The three networks of SD 1.5, freshly (randomly) initialised on the current default device."""
    unet = UNet2DConditionModel(**UNET_CONFIG)  # type: ignore[no-untyped-call]  # diffusers
    vae = AutoencoderKL(**VAE_CONFIG)  # type: ignore[no-untyped-call]  # diffusers
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return unet, vae, text_encoder


def build_sd15_random(path: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised SD 1.5 pipeline (about 4 GB in float32) to `path` and return `path`."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_encoder = sd15_modules()
    return save_pipeline(path, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
