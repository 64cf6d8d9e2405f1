"""Random adapters for a tiny model, offline: LoRA files (diffusers/PEFT or kohya layout) and textual-inversion
embeddings, shaped from the model folder so they fit it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig

LoraFormat = Literal["peft", "kohya"]
# The UNet's attention projections, the layers LoRAs usually train.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_RANK = 4


def build_tiny_lora(
    model: Path, out: Path, *, seed: int = 0, fmt: LoraFormat = "peft", rank: int = LORA_RANK, strength: float = 1.0
) -> Path:
    """Write a random LoRA for the model's UNet attention layers to `out` and return `out`; a higher `rank` makes a
    larger file (about 17 KiB per rank on the tiny SD 1 model)."""
    unet = UNet2DConditionModel.from_pretrained(model / "unet")  # type: ignore[no-untyped-call]  # diffusers
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in unet.named_modules():
        if isinstance(layer, torch.nn.Linear) and path.endswith(LORA_TARGETS):
            down = torch.randn(rank, layer.in_features, generator=generator) / rank
            up = torch.randn(layer.out_features, rank, generator=generator) * strength
            tensors |= _lora_entries(path, down=down, up=up, fmt=fmt)
    return _save(tensors, out)


def build_tiny_embedding(model: Path, out: Path, *, seed: int = 0, vectors: int = 2) -> Path:
    """Write a random textual-inversion embedding for the model's text encoder(s) to `out` and return `out`."""
    generator = torch.Generator().manual_seed(seed)
    widths = [_text_width(model / folder) for folder in ("text_encoder", "text_encoder_2") if (model / folder).is_dir()]
    if len(widths) == 1:
        tensors = {"emb_params": torch.randn(vectors, widths[0], generator=generator)}
    else:
        tensors = {
            key: torch.randn(vectors, width, generator=generator)
            for key, width in zip(("clip_l", "clip_g"), widths, strict=True)
        }
    return _save(tensors, out)


def _lora_entries(path: str, *, down: torch.Tensor, up: torch.Tensor, fmt: LoraFormat) -> dict[str, torch.Tensor]:
    if fmt == "peft":
        return {f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up}
    # kohya: flattened module path, lora_down/lora_up and an alpha (alpha = rank: scaling 1, as in the PEFT file).
    stem = "lora_unet_" + path.replace(".", "_")
    return {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(float(down.shape[0])),
    }


def _text_width(folder: Path) -> int:
    config = CLIPTextConfig.from_pretrained(folder)
    width: int = config.hidden_size
    return width


def _save(tensors: dict[str, torch.Tensor], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(out))
    return out
