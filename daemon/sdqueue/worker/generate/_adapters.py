"""The adapters loaded into one pipeline: LoRAs kept within a byte budget (least recently used out, loaded again
on their next use) or, on a compiled UNet, swapped into its one slot; embeddings exactly those of the batch running
(a tenant's token never lingers)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from sdqueue.worker.generate._invariant import make_batch_invariant
from sdqueue.worker.generate._spec import AdapterFile
from sdqueue.worker.generate.embedding import load_embedding, unload_embedding
from sdqueue.worker.generate.hotswap import LoraHotswap
from sdqueue.worker.generate.lora import load_lora, lora_name, unload_lora, use_loras

log = logging.getLogger(__name__)


class AdapterSlots:
    """What adapters one pipeline holds, and which are active for the next call."""

    def __init__(
        self,
        pipeline: Any,
        *,
        budget_bytes: int,
        device: torch.device,
        dtype: torch.dtype,
        hotswap: LoraHotswap | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._hotswap = hotswap  # set when the UNet is compiled: LoRAs go through its slot instead
        self._budget_bytes = budget_bytes
        self._device = device
        self._dtype = dtype
        self._loras: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self._embeddings: dict[str, str] = {}  # token -> sha256

    def apply(self, adapters: Sequence[AdapterFile]) -> None:
        """Load what is missing and activate exactly these adapters at their scales (LoRAs at 0 stay off).

        Raises:
            InvalidRequest: an adapter is not safetensors or does not fit the model (or the compiled UNet's slot).
        """
        active = [adapter for adapter in adapters if adapter.is_active]
        self._sync_embeddings([adapter for adapter in active if adapter.kind == "embedding"])
        loras = [adapter for adapter in active if adapter.kind == "lora"]
        if self._hotswap is not None:
            self._hotswap.apply(loras)
            return
        for adapter in loras:
            self._ensure_lora(adapter, keep={lora_name(a) for a in loras})
        use_loras(self._pipeline, [lora_name(a) for a in loras], scales=[a.scale for a in loras])

    def _ensure_lora(self, adapter: AdapterFile, *, keep: set[str]) -> None:
        name = lora_name(adapter)
        if name in self._loras:
            self._loras.move_to_end(name)
            return
        size = load_lora(self._pipeline, adapter, dtype=self._dtype)
        self._loras[name] = size
        self._evict(keep=keep)
        self._pin_kernels()
        log.info("LoRA %s loaded (%d bytes; %d loaded)", adapter.sha256[:12], size, len(self._loras))

    def _evict(self, *, keep: set[str]) -> None:
        """Unload least recently used LoRAs not in the running set until the loaded ones fit the budget."""
        for name in [name for name in self._loras if name not in keep]:
            if sum(self._loras.values()) <= self._budget_bytes:
                return
            unload_lora(self._pipeline, name)
            del self._loras[name]
            log.info("LoRA %s unloaded to stay within the adapter budget", name.removeprefix("sha256_")[:12])

    def _sync_embeddings(self, embeddings: Sequence[AdapterFile]) -> None:
        wanted = {adapter.token or "": adapter for adapter in embeddings}
        for token, sha256 in list(self._embeddings.items()):
            if token not in wanted or wanted[token].sha256 != sha256:
                unload_embedding(self._pipeline, token)
                del self._embeddings[token]
        for token, adapter in wanted.items():
            if token not in self._embeddings:
                load_embedding(self._pipeline, adapter, dtype=self._dtype)
                self._embeddings[token] = adapter.sha256

    def _pin_kernels(self) -> None:
        # PEFT wraps Linear and Conv2d layers and adds its own (lora_A, lora_B), which need the same pinning.
        if self._device.type != "cpu":
            return
        for component in self._pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                make_batch_invariant(component)
