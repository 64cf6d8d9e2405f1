"""Mixed-LoRA batches: jobs with one LoRA each, different ones, share one pipeline call, and PEFT routes each
image's rows through its own LoRA (`adapter_names=`, one name per sample, the LoRA layers' documented argument).

Diffusers does not pass `adapter_names` down to the layers it injects, so a forward pre-hook on every PEFT LoRA
layer adds it for the duration of the call. Each LoRA runs at its own scale (PEFT keeps one per loaded adapter),
which is why a mixed batch holds one scale per LoRA and one LoRA per job: a name per sample cannot stack two.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from sdqueue.worker.generate._spec import AdapterFile, GenerationSpec, single_lora
from sdqueue.worker.generate.lora import lora_name


def image_lora_names(specs: Sequence[GenerationSpec]) -> list[str] | None:
    """The PEFT adapter name of each image's LoRA when the batch mixes LoRAs; None when it runs one adapter set
    (one LoRA for all, or anything but one LoRA per job), which the pipeline's active adapters already cover."""
    loras = [single_lora(spec) for spec in specs]
    if any(lora is None for lora in loras) or len({lora.sha256 for lora in loras if lora is not None}) < 2:
        return None
    return [lora_name(lora) for spec, lora in zip(specs, loras, strict=True) if lora is not None for _ in spec.seeds]


def distinct_loras(specs: Sequence[GenerationSpec]) -> list[AdapterFile]:
    """Each LoRA of a mixed batch once, in order of first use: what must be loaded and active at its scale."""
    loras: dict[str, AdapterFile] = {}
    for spec in specs:
        lora = single_lora(spec)
        if lora is not None:
            loras.setdefault(lora.sha256, lora)
    return list(loras.values())


@contextmanager
def per_image_loras(pipeline: Any, names: Sequence[str]) -> Iterator[None]:
    """While open, every LoRA layer of the pipeline runs row i of its input through LoRA `names[i]`.

    A text encoder sees one row per image; the UNet sees the images repeated (uncond then cond under classifier-
    free guidance), so the names are repeated to the rows of each call.
    """
    layers = [
        layer
        for component in pipeline.components.values()
        if isinstance(component, torch.nn.Module)
        for layer in component.modules()
        if isinstance(layer, LoraLayer)
    ]
    hook = _AdapterNamesHook(list(names))
    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _AdapterNamesHook:
    """A forward pre-hook giving a LoRA layer the adapter name of each row of its input."""

    def __init__(self, names: list[str]) -> None:
        self._names = names

    def __call__(
        self, layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Add `adapter_names`, one per row; a row count that is not a multiple of the images is PEFT's error."""
        rows = len(args[0]) if args else len(kwargs["x"])
        return args, kwargs | {"adapter_names": self._names * max(rows // len(self._names), 1)}
