"""LoRAs on a compiled UNet: one fixed PEFT slot, prepared before the compile and padded to a target rank, whose
weights are overwritten in place (diffusers' LoRA hotswap), so neither a new LoRA nor a new scale recompiles.

The slot starts as a blank (all-zero) LoRA over the UNet's transformer-block layers; a request's LoRA is copied into
it with its scale folded into its up weights (a scale set through `set_adapters` would replace the tensor the
compiled graph reads, and recompile), and "no LoRA" is the blank copied back. Limits, from diffusers 0.42 and PEFT:
one LoRA per call, UNet layers only (text encoders cannot be hot-swapped), only layers the blank covers, rank at
most the target rank (a larger one would reshape the slot, and recompile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

from sdqueue.contracts.errors import InvalidRequest
from sdqueue.worker.generate._spec import AdapterFile
from sdqueue.worker.generate._tensors import read_tensors
from sdqueue.worker.generate.lora import MISFIT_ERRORS, peft_notices_off

log = logging.getLogger(__name__)

SLOT = "hotswap"
_MISFIT = (
    "adapter {sha256} does not fit this compiled model: it must target only the UNet's attention, feed-forward and "
    "projection layers of this model, with one alpha for all of them"
)
# The UNet layers the slot covers: the transformer blocks' attention, feed-forward and in/out projections, what
# kohya's and diffusers' LoRA trainers target (LoCon's convolution layers are outside it).
SLOT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
# Key fragments of a LoRA's up (out x rank) weights in the PEFT, kohya and old diffusers layouts: the scale goes there.
_UP_KEYS = ("lora_B.", "lora_up.", "lora.up.")


class LoraHotswap:
    """The compiled UNet's one LoRA slot, and which LoRA (at which scale) it holds now."""

    def __init__(self, pipeline: Any, *, target_rank: int, dtype: torch.dtype, blank: dict[str, torch.Tensor]) -> None:
        self._pipeline = pipeline
        self._target_rank = target_rank
        self._dtype = dtype
        self._blank = blank
        self._holding: tuple[str, float] | None = None  # (sha256, scale); None: the blank
        self._slot_shapes = _slot_shapes(pipeline.unet)

    @classmethod
    def prepare(cls, pipeline: Any, *, target_rank: int, dtype: torch.dtype) -> LoraHotswap:
        """Load the blank slot, padded to `target_rank`, into an uncompiled UNet; compile it afterwards."""
        if hasattr(pipeline.unet, "_orig_mod"):
            raise RuntimeError("the LoRA slot must be prepared before the UNet is compiled")
        blank = _blank_lora(pipeline.unet, dtype=dtype, device=pipeline.unet.device)
        pipeline.enable_lora_hotswap(target_rank=target_rank)
        with peft_notices_off():
            pipeline.load_lora_weights(dict(blank), adapter_name=SLOT)
        log.info("LoRA hotswap slot ready (rank %d, %d layers)", target_rank, len(blank) // 2)
        return cls(pipeline, target_rank=target_rank, dtype=dtype, blank=blank)

    def apply(self, loras: Sequence[AdapterFile]) -> None:
        """Put this one LoRA at its scale into the slot, or the blank for none; nothing is done if it is there.

        Raises:
            InvalidRequest: more than one LoRA, text-encoder layers, a rank above the target rank, layers outside
                the slot, or a file that is not safetensors.
        """
        if len(loras) > 1:
            raise InvalidRequest("a compiled model (runtime.compile_mode) applies one LoRA per request, not several")
        wanted = (loras[0].sha256, loras[0].scale) if loras else None
        if wanted == self._holding:
            return
        if not loras:
            self._swap(self._blank)
            self._holding = None
            return
        tensors = self._checked(loras[0])
        try:
            self._swap(_scaled(tensors, loras[0].scale))
        except MISFIT_ERRORS as exc:
            log.info("LoRA %s does not fit the hotswap slot: %s", loras[0].sha256[:12], exc)
            self._swap(self._blank)  # a swap that failed midway may have left part of the file in the slot
            self._holding = None
            raise InvalidRequest(_MISFIT.format(sha256=loras[0].sha256[:12])) from exc
        self._holding = wanted

    def _checked(self, adapter: AdapterFile) -> dict[str, torch.Tensor]:
        """The file's tensors, once its layers are known to fit the slot: PEFT would otherwise reshape the slot for a
        higher rank or a wider layer (a recompile, then wrong shapes), where it fails only on unknown layers."""
        tensors = read_tensors(adapter, dtype=self._dtype)
        try:
            converted, _ = self._pipeline.lora_state_dict(dict(tensors))
        except MISFIT_ERRORS as exc:
            raise InvalidRequest(f"adapter {adapter.sha256[:12]} does not fit this model") from exc
        if any(key.startswith("text_encoder") for key in converted):
            raise InvalidRequest(
                f"adapter {adapter.sha256[:12]} has text-encoder layers, which a compiled model "
                "(runtime.compile_mode) cannot swap in; use a UNet-only LoRA or compile_mode off"
            )
        unet_layers = {key.removeprefix("unet."): t for key, t in converted.items()}
        layers: dict[str, torch.Tensor] = convert_unet_state_dict_to_peft(unet_layers)  # type: ignore[no-untyped-call]  # diffusers
        rank = max((t.shape[0] for key, t in layers.items() if ".lora_A." in key), default=0)
        if rank > self._target_rank:
            raise InvalidRequest(
                f"adapter {adapter.sha256[:12]} has rank {rank}, above runtime.lora_hotswap_rank "
                f"({self._target_rank}), the highest rank this compiled model takes"
            )
        if not layers or not all(_fits(key, t.shape, self._slot_shapes) for key, t in layers.items()):
            raise InvalidRequest(_MISFIT.format(sha256=adapter.sha256[:12]))
        return tensors

    def _swap(self, tensors: dict[str, torch.Tensor]) -> None:
        with peft_notices_off():
            self._pipeline.load_lora_weights(dict(tensors), adapter_name=SLOT, hotswap=True)


def _fits(key: str, shape: torch.Size, slot_shapes: dict[str, torch.Size]) -> bool:
    """Whether a LoRA weight (PEFT key) fits the slot's: a layer it has, the same widths, a rank no higher."""
    slot = slot_shapes.get(key)
    if slot is None or len(shape) != len(slot):
        return False
    rank_axis = 1 if ".lora_B." in key else 0
    sizes = enumerate(zip(shape, slot, strict=True))
    return all(size <= limit if axis == rank_axis else size == limit for axis, (size, limit) in sizes)


def _slot_shapes(unet: torch.nn.Module) -> dict[str, torch.Size]:
    """The slot's weight shapes by PEFT file key (`...to_q.lora_A.weight`), as padded to the target rank."""
    infix = f".{SLOT}."
    return {
        name.replace(infix, "."): parameter.shape
        for name, parameter in unet.named_parameters()
        if infix in name and ".lora_" in name
    }


def _scaled(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The file with its scale folded into the up weights: the same output as `set_adapters` at that scale."""
    return {key: t * scale if any(part in key for part in _UP_KEYS) else t for key, t in tensors.items()}


def _blank_lora(unet: torch.nn.Module, *, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """A rank-1, all-zero LoRA (PEFT layout) over every slot layer of the UNet: it changes nothing."""
    blank: dict[str, torch.Tensor] = {}
    down: tuple[int, ...]
    up: tuple[int, ...]
    for path, layer in unet.named_modules():
        if not path.endswith(SLOT_TARGETS):
            continue
        if isinstance(layer, torch.nn.Linear):
            down, up = (1, layer.in_features), (layer.out_features, 1)
        elif isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1):
            down, up = (1, layer.in_channels, 1, 1), (layer.out_channels, 1, 1, 1)
        else:
            continue
        blank[f"unet.{path}.lora_A.weight"] = torch.zeros(down, dtype=dtype, device=device)
        blank[f"unet.{path}.lora_B.weight"] = torch.zeros(up, dtype=dtype, device=device)
    return blank
