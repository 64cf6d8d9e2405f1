"""Adapter files to tensors: safetensors only, parsed from bytes (never torch.load, never pickle)."""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from sdqueue.contracts.errors import InvalidRequest
from sdqueue.worker.generate._spec import AdapterFile


def read_tensors(adapter: AdapterFile, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors, floating ones in `dtype`.

    Raises:
        InvalidRequest: the file is not valid safetensors.
    """
    try:
        tensors = load(adapter.data)
    except SafetensorError as exc:
        raise InvalidRequest(f"adapter {adapter.sha256[:12]} is not a valid safetensors file") from exc
    return {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes the tensors take; what the adapter memory budget counts."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
