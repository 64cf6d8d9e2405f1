"""The one narrow interface to diffusers: load a model once, then turn GenerationSpecs into PIL images."""

# Sets the libraries' log levels before anything below imports them.
from sdqueue.worker.generate import _quiet as _quiet
from sdqueue.worker.generate._diffusers import load_generator, warm_up
from sdqueue.worker.generate._runtime import describe_runtime, gpu_memory_probe, resolve_device
from sdqueue.worker.generate._schedulers import SCHEDULERS
from sdqueue.worker.generate._spec import (
    AdapterFile,
    BatchKey,
    GeneratedImages,
    GenerationSpec,
    HiresPass,
    ImageGenerator,
    PreviewCallback,
    StepPreview,
    adapter_set,
    batch_key,
)
from sdqueue.worker.generate.families import FAMILIES, Family, family_of_unet
from sdqueue.worker.generate.tiny import build_tiny_model, ensure_tiny_model

__all__ = [
    "FAMILIES",
    "SCHEDULERS",
    "AdapterFile",
    "BatchKey",
    "Family",
    "GeneratedImages",
    "GenerationSpec",
    "HiresPass",
    "ImageGenerator",
    "PreviewCallback",
    "StepPreview",
    "adapter_set",
    "batch_key",
    "build_tiny_model",
    "describe_runtime",
    "ensure_tiny_model",
    "family_of_unet",
    "gpu_memory_probe",
    "load_generator",
    "resolve_device",
    "warm_up",
]
