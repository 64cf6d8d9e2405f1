"""LoRA adapters: loaded into the pipeline's UNet (and text encoders) through diffusers and PEFT, named by hash."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from sdqueue.contracts.errors import InvalidRequest
from sdqueue.worker.generate._spec import AdapterFile
from sdqueue.worker.generate._tensors import read_tensors, tensor_bytes

log = logging.getLogger(__name__)

# What diffusers and PEFT raise on keys that match no layer, shapes that do not fit, or a malformed state dict.
MISFIT_ERRORS = (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError)


def lora_name(adapter: AdapterFile) -> str:
    """The PEFT adapter name of a file: its hash, so one file is loaded once whoever asks for it."""
    return f"sha256_{adapter.sha256[:32]}"


def load_lora(pipeline: Any, adapter: AdapterFile, *, dtype: torch.dtype) -> int:
    """Load a LoRA file into the pipeline, inactive until `use_loras`; return the bytes it takes.

    Raises:
        InvalidRequest: not safetensors, or its keys or shapes do not fit this model.
    """
    name = lora_name(adapter)
    tensors = read_tensors(adapter, dtype=dtype)
    try:
        with peft_notices_off():
            pipeline.load_lora_weights(tensors, adapter_name=name)
    except MISFIT_ERRORS as exc:
        log.info("LoRA %s does not fit: %s", adapter.sha256[:12], exc)
        unload_lora(pipeline, name)
        raise InvalidRequest(f"adapter {adapter.sha256[:12]} does not fit this model") from exc
    if name not in _loaded(pipeline):
        raise InvalidRequest(f"adapter {adapter.sha256[:12]} has no layer this model has")
    return tensor_bytes(tensors)


def unload_lora(pipeline: Any, name: str) -> None:
    """Remove a loaded LoRA's layers and weights; a name not loaded is ignored."""
    if name in _loaded(pipeline):
        with peft_notices_off():
            pipeline.delete_adapters([name])


def use_loras(pipeline: Any, names: Sequence[str], *, scales: Sequence[float]) -> None:
    """Make exactly these LoRAs active at these scales; none disables every LoRA, so the base layers run alone."""
    if not _loaded(pipeline):
        return
    if not names:
        pipeline.disable_lora()
        return
    pipeline.enable_lora()
    pipeline.set_adapters(list(names), adapter_weights=list(scales))


@contextmanager
def peft_notices_off() -> Iterator[None]:
    """Silence PEFT's notices about several adapters on one model, and about deleting an active one: both are
    how this module works (`use_loras` sets the active ones before every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        yield


def _loaded(pipeline: Any) -> set[str]:
    try:
        per_component: dict[str, list[str]] = pipeline.get_list_adapters()
    except ValueError:  # diffusers: no PEFT layers at all yet
        return set()
    return {name for names in per_component.values() for name in names}
