"""Body bytes to a request this worker serves: shape, limits, model, scheduler, seeds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdqueue.config import LimitSettings, ModelDefaults
from sdqueue.contracts import ErrorCode
from sdqueue.contracts.errors import SdqueueError
from sdqueue.worker.generate.families import SD1, SDXL
from sdqueue.worker.validate import derive_seed, image_seeds, job_id_from_body, model_defaults, parse_job

LIMITS = LimitSettings(max_pixels=512 * 512, max_steps=50, max_images=4, max_body_bytes=64 * 1024)


def _body(**fields: Any) -> bytes:
    request = {"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a cat", **fields}
    return json.dumps(request).encode()


def _parse(body: bytes, *, job_id: str = "job-1") -> Any:
    return parse_job(body, job_id=job_id, limits=LIMITS, served_models={"default"}, schedulers={"euler", "ddim"})


def _code(body: bytes, *, job_id: str = "job-1") -> ErrorCode:
    with pytest.raises(SdqueueError) as caught:
        _parse(body, job_id=job_id)
    return ErrorCode(caught.value.code)  # a wire code, never a bridge-only one


def test_valid_request_parses():
    request = _parse(_body(width=256, height=128, scheduler="euler", prompt="مرحبا 🐶 שלום"))

    assert (request.width, request.height, request.scheduler) == (256, 128, "euler")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xff\xfe not utf-8", ErrorCode.INVALID_REQUEST),
        (b"not json", ErrorCode.INVALID_REQUEST),
        (_body(extra=1), ErrorCode.INVALID_REQUEST),
        (_body(schema_version=2), ErrorCode.INVALID_REQUEST),
        (_body(width=1_000_000), ErrorCode.LIMITS_EXCEEDED),
        (_body(steps=51), ErrorCode.LIMITS_EXCEEDED),
        (_body(steps=1_000_000), ErrorCode.INVALID_REQUEST),
        (_body(num_images=5), ErrorCode.LIMITS_EXCEEDED),
        (_body(num_images=1000), ErrorCode.INVALID_REQUEST),
        (_body(model="other"), ErrorCode.UNKNOWN_MODEL),
        (_body(scheduler="pndm"), ErrorCode.INVALID_REQUEST),
        (_body(prompt="x" * 70_000), ErrorCode.LIMITS_EXCEEDED),
        (
            b'{"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a", "guidance_scale": NaN}',
            ErrorCode.INVALID_REQUEST,
        ),
    ],
    ids=[
        "not utf-8",
        "not json",
        "unknown field",
        "schema_version 2",
        "width over pixel cap",
        "steps over worker cap",
        "steps over contract cap",
        "images over worker cap",
        "images over contract cap",
        "unserved model",
        "scheduler not offered",
        "body over byte cap",
        "NaN guidance",
    ],
)
def test_bad_bodies_map_to_contract_codes(body: bytes, code: ErrorCode):
    assert _code(body) is code


def test_job_id_must_match_the_verified_one():
    assert _code(_body(), job_id="job-2") is ErrorCode.INVALID_REQUEST


def test_error_message_names_fields_without_echoing_values():
    with pytest.raises(SdqueueError) as caught:
        _parse(_body(width=65, prompt="secret prompt text"))

    assert "width" in caught.value.message
    assert "secret prompt text" not in caught.value.message


def test_seeds_are_consecutive_and_null_seed_is_stable():
    explicit = _parse(_body(seed=10, num_images=3))
    derived = _parse(_body(num_images=2))

    assert image_seeds(explicit) == (10, 11, 12)
    assert image_seeds(derived) == (derive_seed("job-1"), derive_seed("job-1") + 1)
    assert derive_seed("job-1") != derive_seed("job-2")
    assert 0 <= derive_seed("job-1") < 2**32


def test_job_id_from_body_only_for_valid_requests():
    assert job_id_from_body(_body()) == "job-1"
    assert job_id_from_body(b"garbage") is None


def test_model_defaults_fill_only_the_fields_a_body_leaves_out():
    defaults = ModelDefaults(width=128, height=64, steps=30, scheduler="ddim", negative_prompt="blurry")
    body = _body(steps=10)  # width, height, scheduler and negative prompt left out

    request = parse_job(
        body, job_id="job-1", limits=LIMITS, served_models={"default"}, schedulers={"ddim"}, defaults=defaults
    )

    assert (request.width, request.height, request.steps) == (128, 64, 10)
    assert (request.scheduler, request.negative_prompt) == ("ddim", "blurry")


def test_model_defaults_are_held_to_the_workers_caps():
    with pytest.raises(SdqueueError) as caught:
        parse_job(
            _body(),
            job_id="job-1",
            limits=LIMITS,
            served_models={"default"},
            schedulers={"euler"},
            defaults=ModelDefaults(steps=51),
        )

    assert caught.value.code == ErrorCode.LIMITS_EXCEEDED


def _with_family_defaults(body: bytes, *, configured: ModelDefaults | None = None, limits: LimitSettings) -> Any:
    defaults = model_defaults(configured, family=SDXL)
    return parse_job(body, job_id="job-1", limits=limits, served_models={"default"}, schedulers=(), defaults=defaults)


def test_the_family_fills_size_and_guidance_a_body_leaves_out():
    request = _with_family_defaults(_body(), limits=LimitSettings())

    assert (request.width, request.height, request.guidance_scale) == (1024, 1024, 5.0)


def test_the_operators_defaults_and_the_body_win_over_the_family():
    configured = ModelDefaults(width=768, guidance_scale=6.0)

    request = _with_family_defaults(_body(guidance_scale=9.0), configured=configured, limits=LimitSettings())

    assert (request.width, request.height, request.guidance_scale) == (768, 1024, 9.0)


def test_family_defaults_are_held_to_the_workers_caps():
    with pytest.raises(SdqueueError) as caught:
        _with_family_defaults(_body(), limits=LIMITS)

    assert caught.value.code == ErrorCode.LIMITS_EXCEEDED
    assert _with_family_defaults(_body(width=512, height=512), limits=LIMITS).width == 512


def test_sd1_defaults_are_the_contracts_own():
    assert model_defaults(None, family=SD1).model_dump(exclude_none=True) == {
        "width": 512,
        "height": 512,
        "guidance_scale": 7.5,
    }
