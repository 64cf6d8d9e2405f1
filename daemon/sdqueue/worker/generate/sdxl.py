"""The full SDXL base architecture with random weights: real costs for GPU benchmarks, no download.

The configs are the published SDXL 1.0 base ones (UNet 2.57B, VAE 84M, CLIP ViT-L/14 text encoder 123M and
OpenCLIP ViT-bigG/14 text encoder with projection 695M parameters). The tokenizer is the tiny model's byte-level one
with CLIP's vocabulary size, so prompts cost what real ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdqueue.worker.generate.sd15 import TEXT_CONFIG, VAE_CONFIG
from sdqueue.worker.generate.tiny import SDXL_VAE_SCALING_FACTOR, build_tokenizer, save_sdxl_pipeline

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP ViT-bigG), side by side
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + the 1280-wide pooled text
    "norm_num_groups": 32,
}
SDXL_VAE_CONFIG: dict[str, Any] = VAE_CONFIG | {"sample_size": 1024, "scaling_factor": SDXL_VAE_SCALING_FACTOR}
TEXT_2_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


def sdxl_modules() -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection]:
    """The four networks of SDXL base, freshly (randomly) initialised on the current default device."""
    unet = UNet2DConditionModel(**UNET_CONFIG)  # type: ignore[no-untyped-call]  # diffusers
    vae = AutoencoderKL(**SDXL_VAE_CONFIG)  # type: ignore[no-untyped-call]  # diffusers
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG))
    return unet, vae, text_encoder, text_encoder_2


def build_sdxl_random(path: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised SDXL base pipeline (about 14 GB in float32) to `path` and return `path`."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_encoder, text_encoder_2 = sdxl_modules()
    return save_sdxl_pipeline(
        path, unet=unet, vae=vae, text_encoders=(text_encoder, text_encoder_2), tokenizer=tokenizer
    )
