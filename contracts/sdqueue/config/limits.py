"""The worker's caps on one request, checked in one place by the worker and, earlier, by the bridge."""

from __future__ import annotations

from sdqueue.config.settings import LimitSettings
from sdqueue.contracts import GenerationRequest, Quota


def limit_violation(request: GenerationRequest, *, limits: LimitSettings) -> str | None:
    """Say which cap the request exceeds (a message safe to show the requester), or None if it fits."""
    width, height = request.output_size
    if width * height > limits.max_pixels:
        return f"{width}x{height} is over the {limits.max_pixels} pixel cap"
    if request.steps > limits.max_steps:
        return f"steps {request.steps} is over the cap of {limits.max_steps}"
    if request.hires is not None and request.hires.steps > limits.max_steps:
        return f"hires.steps {request.hires.steps} is over the cap of {limits.max_steps}"
    if request.num_images > limits.max_images:
        return f"num_images {request.num_images} is over the cap of {limits.max_images}"
    if len(request.adapters) > limits.max_adapters:
        return f"{len(request.adapters)} adapters is over the cap of {limits.max_adapters}"
    return None


def caller_limits(limits: LimitSettings, quota: Quota) -> LimitSettings:
    """The worker's caps narrowed by a caller's quota: a quota can lower a cap, never raise it."""
    narrowed = {
        name: min(getattr(limits, name), cap)
        for name, cap in (
            ("max_pixels", quota.max_pixels),
            ("max_steps", quota.max_steps),
            ("max_images", quota.max_images),
        )
        if cap is not None
    }
    return limits.model_copy(update=narrowed) if narrowed else limits
