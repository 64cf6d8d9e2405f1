"""Turn verified body bytes into a `GenerationRequest` this worker can serve, within its limits."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from pydantic import ValidationError

from sdqueue.config import LimitSettings, ModelDefaults
from sdqueue.config.limits import caller_limits, limit_violation
from sdqueue.contracts import MAX_SEED, GenerationRequest, Quota
from sdqueue.contracts.errors import Forbidden, InvalidRequest, LimitsExceeded, UnknownModel
from sdqueue.contracts.quota import UNLIMITED
from sdqueue.worker.generate import Family

MAX_REPORTED_ERRORS = 5


def parse_job(
    body: bytes,
    *,
    job_id: str,
    limits: LimitSettings,
    served_models: Collection[str],
    schedulers: Collection[str],
    quota: Quota = UNLIMITED,
    defaults: ModelDefaults | None = None,
) -> GenerationRequest:
    """Parse and check a request body; `job_id` and `quota` come from the verified token, `defaults` from the
    served model's settings and family (`model_defaults`, for the fields the body leaves out).

    Raises:
        LimitsExceeded: the body, image size, steps or image count is over this worker's or the caller's caps.
        InvalidRequest: not UTF-8 JSON of the contract's shape, an unknown scheduler, or a preview interval
            shorter than this worker's minimum.
        UnknownModel: the alias is not served here.
        Forbidden: the caller's quota does not allow this model.
    """
    if len(body) > limits.max_body_bytes:
        raise LimitsExceeded(f"request body is larger than {limits.max_body_bytes} bytes")
    request = _decode(body)
    if request.job_id != job_id:
        raise InvalidRequest("job_id does not match the message id")
    if request.model not in served_models:
        raise UnknownModel(f"model {request.model!r} is not served")
    if quota.models is not None and request.model not in quota.models:
        raise Forbidden(f"the caller's quota does not allow model {request.model!r}")
    if defaults is not None:
        request = with_model_defaults(request, defaults)
    if request.scheduler is not None and request.scheduler not in schedulers:
        raise InvalidRequest(f"unknown scheduler {request.scheduler!r}; known: {', '.join(sorted(schedulers))}")
    check_preview_interval(request, limits=limits)
    check_limits(request, limits=caller_limits(limits, quota))
    return request


def model_defaults(configured: ModelDefaults | None, *, family: Family) -> ModelDefaults:
    """An alias's defaults: the operator's `model_defaults` where set, else its family's (size, guidance)."""
    if configured is None:
        return family.defaults
    return family.defaults.model_copy(update=configured.model_dump(exclude_none=True))


def with_model_defaults(request: GenerationRequest, defaults: ModelDefaults) -> GenerationRequest:
    """Fill the fields the body left out from the model's defaults; a field the body carries is kept."""
    update = {
        name: value
        for name, value in defaults.model_dump(exclude_none=True).items()
        if name not in request.model_fields_set
    }
    return request.model_copy(update=update) if update else request


def check_limits(request: GenerationRequest, *, limits: LimitSettings) -> None:
    """Enforce the worker's caps, which may be lower than the contract's.

    Raises:
        LimitsExceeded: a cap is exceeded.
    """
    violation = limit_violation(request, limits=limits)
    if violation is not None:
        raise LimitsExceeded(violation)


def check_preview_interval(request: GenerationRequest, *, limits: LimitSettings) -> None:
    """Refuse previews more frequent than this worker decodes them.

    Raises:
        InvalidRequest: `preview_interval_s` is under `limits.min_preview_interval_s`.
    """
    interval_s = request.preview_interval_s
    if interval_s is not None and interval_s < limits.min_preview_interval_s:
        raise InvalidRequest(f"preview_interval_s must be at least {limits.min_preview_interval_s:g}")


def job_id_from_body(body: bytes) -> str | None:
    """Best-effort job id of a body whose message carries none, for reporting; None if there is no usable one."""
    try:
        request = GenerationRequest.model_validate_json(body)
    except ValidationError:
        return None
    return request.job_id


def image_seeds(request: GenerationRequest) -> tuple[int, ...]:
    """Seeds of each image: `seed + i`, with a null seed derived from the job id so a redelivery repeats it."""
    base = request.seed if request.seed is not None else derive_seed(request.job_id)
    return tuple(base + index for index in range(request.num_images))


def derive_seed(job_id: str) -> int:
    """A stable seed in 0 … 2^32-1 from the job id."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") & MAX_SEED


def _decode(body: bytes) -> GenerationRequest:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("request body is not UTF-8") from exc
    try:
        return GenerationRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request: {_summarise(exc)}") from exc


def _summarise(exc: ValidationError) -> str:
    """Describe what is wrong by field, never echoing the input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:MAX_REPORTED_ERRORS]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    more = exc.error_count() - MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
