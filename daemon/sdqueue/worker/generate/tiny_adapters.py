"""Random adapters for a tiny model, offline: LoRA files (diffusers/PEFT or kohya layout, UNet and optionally text
encoder layers) and textual-inversion embeddings, shaped from the model folder so they fit it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig

LoraFormat = Literal["peft", "kohya"]
# The UNet's attention projections, the layers LoRAs usually train.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# A CLIP text encoder's attention projections, which text-encoder LoRAs train.
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LORA_RANK = 4
# A text encoder folder's kohya key prefix in a one-encoder (SD 1) and a two-encoder (SDXL) model.
_KOHYA_TEXT_PREFIXES = {"text_encoder": ("lora_te", "lora_te1"), "text_encoder_2": ("lora_te2", "lora_te2")}


class _Target(NamedTuple):
    """A linear layer a LoRA entry is written for: its key prefix (`unet`, `text_encoder`, `lora_te1`, ...), its
    module path, and its input and output widths."""

    prefix: str
    path: str
    width_in: int
    width_out: int


def build_tiny_lora(
    model: Path,
    out: Path,
    *,
    seed: int = 0,
    fmt: LoraFormat = "peft",
    rank: int = LORA_RANK,
    strength: float = 1.0,
    unet: bool = True,
    text_encoder: bool = False,
) -> Path:
    """Write a random LoRA to `out` and return `out`: for the UNet's attention layers (`unet`) and/or the text
    encoders' attention projections (`text_encoder`); a higher `rank` makes a larger file (about 17 KiB per rank on
    the tiny SD 1 UNet)."""
    if not (unet or text_encoder):
        raise ValueError("a LoRA needs the UNet's layers, the text encoders' or both")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    layers = [*(_unet_layers(model, fmt=fmt) if unet else []), *(_text_layers(model, fmt=fmt) if text_encoder else [])]
    for layer in layers:
        down = torch.randn(rank, layer.width_in, generator=generator) / rank
        up = torch.randn(layer.width_out, rank, generator=generator) * strength
        tensors |= _lora_entries(layer, down=down, up=up, fmt=fmt)
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


def _unet_layers(model: Path, *, fmt: LoraFormat) -> list[_Target]:
    """The UNet's attention projections."""
    unet = UNet2DConditionModel.from_pretrained(model / "unet")  # type: ignore[no-untyped-call]  # diffusers
    prefix = "unet" if fmt == "peft" else "lora_unet"
    return [
        _Target(prefix, path, layer.in_features, layer.out_features)
        for path, layer in unet.named_modules()
        if isinstance(layer, torch.nn.Linear) and path.endswith(LORA_TARGETS)
    ]


def _text_layers(model: Path, *, fmt: LoraFormat) -> list[_Target]:
    """Every text encoder's attention projections, named as real files name them
    (`text_model.encoder.layers.N.self_attn.q_proj`)."""
    folders = [folder for folder in _KOHYA_TEXT_PREFIXES if (model / folder).is_dir()]
    targets = []
    for folder in folders:
        config = CLIPTextConfig.from_pretrained(model / folder)
        # kohya names SD 1's one encoder `lora_te`, SDXL's two `lora_te1` and `lora_te2`.
        prefix = folder if fmt == "peft" else _KOHYA_TEXT_PREFIXES[folder][len(folders) - 1]
        width: int = config.hidden_size
        for index in range(config.num_hidden_layers):
            for target in TEXT_LORA_TARGETS:
                path = f"text_model.encoder.layers.{index}.self_attn.{target}"
                targets.append(_Target(prefix, path, width, width))
    return targets


def _lora_entries(target: _Target, *, down: torch.Tensor, up: torch.Tensor, fmt: LoraFormat) -> dict[str, torch.Tensor]:
    if fmt == "peft":
        stem = f"{target.prefix}.{target.path}"
        return {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up}
    # kohya: flattened module path, lora_down/lora_up and an alpha (alpha = rank: scaling 1, as in the PEFT file).
    stem = f"{target.prefix}_" + target.path.replace(".", "_")
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
