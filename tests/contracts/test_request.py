"""The generation request: what the contract accepts and what it rejects, by field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sdqueue.contracts import GenerationRequest, InitImageData, InitImageKey


def txt2img(**fields: Any) -> dict[str, Any]:
    return {"schema_version": 1, "job_id": "job-1", "mode": "txt2img", "prompt": "a red fox", **fields}


def img2img(**fields: Any) -> dict[str, Any]:
    return txt2img(**{"mode": "img2img", "init_image": {"key": "inputs/job-1/init.png"}, **fields})


def inpaint(**fields: Any) -> dict[str, Any]:
    return img2img(**{"mode": "inpaint", "mask_image": {"key": "inputs/job-1/mask.png"}, **fields})


HIRES = {"scale": 2, "steps": 10}


def parse(body: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest.model_validate_json(json.dumps(body))


def test_txt2img_parses_with_the_contract_defaults():
    request = parse(txt2img())

    assert request.model == "default"
    assert (request.width, request.height, request.steps, request.num_images) == (512, 512, 25, 1)
    assert request.guidance_scale == 7.5
    assert request.seed is None
    assert request.output_format == "png"
    assert request.metadata == {}


def test_img2img_parses_with_a_key_or_inline_data():
    by_key = parse(img2img(strength=0.5))
    inline = parse(txt2img(mode="img2img", init_image={"data": "aGVsbG8="}))

    assert by_key.init_image == InitImageKey(key="inputs/job-1/init.png")
    assert by_key.effective_strength == 0.5
    assert inline.init_image == InitImageData(data="aGVsbG8=")


def test_effective_strength_defaults_to_three_quarters():
    assert parse(img2img()).effective_strength == 0.75


def test_inpaint_parses_with_a_full_strength_and_no_blur_by_default():
    request = parse(inpaint())
    inline = parse(inpaint(mask_image={"data": "aGVsbG8="}, mask_blur=8, strength=0.6))

    assert (request.effective_strength, request.effective_mask_blur) == (1.0, 0)
    assert request.mask_image == InitImageKey(key="inputs/job-1/mask.png")
    assert (inline.effective_strength, inline.effective_mask_blur) == (0.6, 8)
    assert inline.mask_image == InitImageData(data="aGVsbG8=")


@pytest.mark.parametrize(
    ("size", "scale", "final"),
    [((64, 64), 1, (64, 64)), ((64, 72), 1.5, (96, 104)), ((512, 768), 2, (1024, 1536)), ((64, 64), 1.3, (80, 80))],
)
def test_hires_output_size_is_scaled_and_rounded_down_to_a_multiple_of_8(
    size: tuple[int, int], scale: float, final: tuple[int, int]
):
    request = parse(txt2img(width=size[0], height=size[1], hires={"scale": scale, "steps": 4}))

    assert request.output_size == final
    assert request.hires is not None
    assert request.hires.strength == 0.5


def test_previews_are_off_by_default_and_take_an_interval():
    assert parse(txt2img()).previews is False
    assert parse(txt2img(previews=True)).preview_interval_s is None
    assert parse(img2img(previews=True, preview_interval_s=60)).preview_interval_s == 60


@pytest.mark.parametrize(
    ("body", "location"),
    [
        pytest.param(txt2img(colour="red"), ("colour",), id="unknown-field"),
        pytest.param(txt2img(schema_version=2), ("schema_version",), id="schema-version-2"),
        pytest.param(txt2img(job_id="job/1"), ("job_id",), id="job-id-bad-chars"),
        pytest.param(txt2img(job_id="j" * 65), ("job_id",), id="job-id-65-chars"),
        pytest.param(txt2img(job_id=""), ("job_id",), id="job-id-empty"),
        pytest.param(txt2img(width=100), ("width",), id="width-not-multiple-of-8"),
        pytest.param(txt2img(width=56), ("width",), id="width-56"),
        pytest.param(txt2img(height=60), ("height",), id="height-60"),
        pytest.param(txt2img(steps=0), ("steps",), id="steps-0"),
        pytest.param(txt2img(steps=151), ("steps",), id="steps-151"),
        pytest.param(txt2img(guidance_scale=31), ("guidance_scale",), id="guidance-31"),
        pytest.param(txt2img(guidance_scale=-0.5), ("guidance_scale",), id="guidance-negative"),
        pytest.param(txt2img(seed=-1), ("seed",), id="seed-negative"),
        pytest.param(txt2img(seed=2**32), ("seed",), id="seed-2-pow-32"),
        pytest.param(txt2img(num_images=9), ("num_images",), id="num-images-9"),
        pytest.param(txt2img(num_images=0), ("num_images",), id="num-images-0"),
        pytest.param(txt2img(strength=0.5), (), id="strength-on-txt2img"),
        pytest.param(txt2img(init_image={"key": "k"}), (), id="init-image-on-txt2img"),
        pytest.param(txt2img(mode="img2img"), (), id="img2img-without-init-image"),
        pytest.param(img2img(strength=0), ("strength",), id="strength-0"),
        pytest.param(img2img(strength=1.5), ("strength",), id="strength-over-1"),
        pytest.param(
            txt2img(mode="img2img", init_image={"key": "k", "data": "aGk="}), ("init_image",), id="key-and-data"
        ),
        pytest.param(txt2img(mode="img2img", init_image={"url": "http://x"}), ("init_image",), id="init-unknown-key"),
        pytest.param(txt2img(metadata={f"k{i}": "v" for i in range(17)}), ("metadata",), id="metadata-17-entries"),
        pytest.param(txt2img(metadata={"": "v"}), ("metadata",), id="metadata-empty-key"),
        pytest.param(txt2img(metadata={"k" * 65: "v"}), ("metadata",), id="metadata-key-65"),
        pytest.param(txt2img(metadata={"k": "v" * 1025}), ("metadata",), id="metadata-value-1025"),
        pytest.param(txt2img(metadata={"k": 1}), ("metadata",), id="metadata-value-not-string"),
        pytest.param(txt2img(prompt=""), ("prompt",), id="prompt-empty"),
        pytest.param(txt2img(prompt="x" * 4001), ("prompt",), id="prompt-4001"),
        pytest.param(txt2img(width="64"), ("width",), id="width-as-string"),
        pytest.param(txt2img(width=512.0), ("width",), id="width-as-float"),
        pytest.param(txt2img(seed="7"), ("seed",), id="seed-as-string"),
        pytest.param(txt2img(mode="outpaint"), ("mode",), id="unknown-mode"),
        pytest.param(txt2img(mode="inpaint", mask_image={"key": "k"}), (), id="inpaint-without-init-image"),
        pytest.param(img2img(mode="inpaint"), (), id="inpaint-without-mask-image"),
        pytest.param(img2img(mask_image={"key": "k"}), (), id="mask-image-on-img2img"),
        pytest.param(txt2img(mask_image={"key": "k"}), (), id="mask-image-on-txt2img"),
        pytest.param(img2img(mask_blur=4), (), id="mask-blur-on-img2img"),
        pytest.param(txt2img(mask_blur=0), (), id="mask-blur-on-txt2img"),
        pytest.param(inpaint(mask_blur=65), ("mask_blur",), id="mask-blur-65"),
        pytest.param(inpaint(mask_blur=-1), ("mask_blur",), id="mask-blur-negative"),
        pytest.param(inpaint(mask_image={"url": "http://x"}), ("mask_image",), id="mask-unknown-key"),
        pytest.param(img2img(hires=HIRES), (), id="hires-on-img2img"),
        pytest.param(inpaint(hires=HIRES), (), id="hires-on-inpaint"),
        pytest.param(txt2img(hires={"scale": 0.5, "steps": 10}), ("hires", "scale"), id="hires-scale-under-1"),
        pytest.param(txt2img(hires={"scale": 4.5, "steps": 10}), ("hires", "scale"), id="hires-scale-over-4"),
        pytest.param(txt2img(hires={"scale": 2, "steps": 0}), ("hires", "steps"), id="hires-steps-0"),
        pytest.param(txt2img(hires={"scale": 2, "steps": 151}), ("hires", "steps"), id="hires-steps-151"),
        pytest.param(txt2img(hires={**HIRES, "strength": 0}), ("hires", "strength"), id="hires-strength-0"),
        pytest.param(txt2img(hires={**HIRES, "strength": 1.5}), ("hires", "strength"), id="hires-strength-over-1"),
        pytest.param(txt2img(hires={"scale": 2, "steps": 1}), ("hires",), id="hires-no-refine-step"),
        pytest.param(txt2img(hires={**HIRES, "upscaler": "esrgan"}), ("hires", "upscaler"), id="hires-unknown-key"),
        pytest.param(txt2img(preview_interval_s=1), (), id="preview-interval-without-previews"),
        pytest.param(txt2img(previews=False, preview_interval_s=1), (), id="preview-interval-previews-false"),
        pytest.param(txt2img(previews=True, preview_interval_s=0), ("preview_interval_s",), id="preview-interval-0"),
        pytest.param(txt2img(previews=True, preview_interval_s=61), ("preview_interval_s",), id="preview-interval-61"),
        pytest.param(txt2img(previews="yes"), ("previews",), id="previews-not-bool"),
        pytest.param(txt2img(output_format="gif"), ("output_format",), id="unknown-format"),
        pytest.param(txt2img(model="my model"), ("model",), id="alias-with-space"),
        pytest.param(txt2img(scheduler="Euler A"), ("scheduler",), id="scheduler-bad-name"),
    ],
)
def test_invalid_request_is_rejected(body: dict[str, Any], location: tuple[str, ...]):
    with pytest.raises(ValidationError) as caught:
        parse(body)

    locations = [error["loc"][: len(location)] for error in caught.value.errors()]
    assert location in locations


@pytest.mark.parametrize("field", ["schema_version", "job_id", "mode", "prompt"])
def test_required_field_missing_is_rejected(field: str):
    body = txt2img()
    del body[field]

    with pytest.raises(ValidationError) as caught:
        parse(body)

    assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_guidance_is_rejected(literal: str):
    body = json.dumps(txt2img()).removesuffix("}") + f', "guidance_scale": {literal}}}'

    with pytest.raises(ValidationError) as caught:
        GenerationRequest.model_validate_json(body)

    assert caught.value.errors()[0]["loc"] == ("guidance_scale",)


@pytest.mark.parametrize(
    "prompt",
    ["🦊 un zorro rojo 🌅", "ثعلب أحمر في الغابة", "狐狸\u200d在森林里", "x" * 4000],
    ids=["emoji", "rtl", "cjk-zwj", "4000-chars"],
)
def test_unicode_and_longest_prompts_are_accepted(prompt: str):
    body = json.dumps(txt2img(prompt=prompt), ensure_ascii=False).encode()

    assert GenerationRequest.model_validate_json(body).prompt == prompt


def test_boundary_values_are_accepted():
    request = parse(
        img2img(
            job_id="A" * 64,
            width=64,
            height=2048,
            steps=150,
            guidance_scale=30,
            seed=2**32 - 1,
            num_images=8,
            strength=1,
            metadata={f"k{i}": "v" * 1024 for i in range(16)},
        )
    )

    assert request.seed == 2**32 - 1
    assert request.guidance_scale == 30.0


def test_request_is_frozen():
    request = parse(txt2img())

    with pytest.raises(ValidationError):
        request.prompt = "changed"  # type: ignore[misc]
