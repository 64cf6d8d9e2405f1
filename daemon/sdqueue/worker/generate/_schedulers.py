"""Scheduler names on the wire mapped to diffusers classes, with settings that make them match their usual names."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from typing import Any

import diffusers

# name -> (diffusers class, config overrides)
_KNOWN: dict[str, tuple[str, Mapping[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
# LMS integrates its coefficients with scipy, which is not a dependency of ours.
_NEEDS = {"lms": "scipy"}

SCHEDULERS: tuple[str, ...] = tuple(
    name for name in _KNOWN if name not in _NEEDS or importlib.util.find_spec(_NEEDS[name]) is not None
)


@functools.cache
def scheduler_class(name: str) -> Any:
    """Return the diffusers scheduler class behind a name in SCHEDULERS."""
    return getattr(diffusers, _KNOWN[name][0])


def compatible_names(scheduler: Any) -> tuple[str, ...]:
    """Return the names in SCHEDULERS that can replace `scheduler` (a loaded pipeline's own)."""
    classes = {type(scheduler).__name__} | {cls.__name__ for cls in scheduler.compatibles}
    return tuple(name for name in SCHEDULERS if _KNOWN[name][0] in classes)


def make_scheduler(name: str | None, *, own: Any) -> Any:
    """Return a fresh scheduler: `name`'s class, or the model's own when None, built from the model's config."""
    if name is None:
        return type(own).from_config(own.config)
    return scheduler_class(name).from_config(own.config, **_KNOWN[name][1])
