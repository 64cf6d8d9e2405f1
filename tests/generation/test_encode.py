"""Encoding: bytes that decode to the right image, carry the parameters, and hash as reported."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import ExifTags, Image, PngImagePlugin

from sdqueue.contracts import CONTENT_TYPES
from sdqueue.contracts.errors import GenerationFailed
from sdqueue.worker.encode import encode_images, format_parameters

RTL_AND_EMOJI = "قطة على القمر 🐱🌙 — שלום"


def _png_parameters(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as decoded:
        assert isinstance(decoded, PngImagePlugin.PngImageFile)
        return decoded.text["parameters"]


def _gradient(width: int = 72, height: int = 40) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 3 % 256, y * 5 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    return image


def _parameters(
    *,
    prompt: str = "a cat",
    negative_prompt: str = "blurry",
    seed: int = 42,
    model: str = "default",
    guidance_scale: float = 7.5,
    strength: float | None = None,
) -> str:
    return format_parameters(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=20,
        sampler="euler_a",
        guidance_scale=guidance_scale,
        seed=seed,
        width=72,
        height=40,
        model=model,
        strength=strength,
    )


def test_png_carries_non_latin1_parameters_that_read_back_unchanged():
    text = _parameters(prompt=RTL_AND_EMOJI)
    [encoded] = encode_images([_gradient()], fmt="png", parameters=[text])

    assert _png_parameters(encoded.data) == text


def test_png_keeps_the_pixels_exactly():
    image = _gradient()
    [encoded] = encode_images([image], fmt="png", parameters=[""])

    with Image.open(io.BytesIO(encoded.data)) as decoded:
        assert decoded.convert("RGB").tobytes() == image.tobytes()


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_every_format_decodes_at_size_and_reports_its_bytes(fmt):
    [encoded] = encode_images([_gradient(72, 40)], fmt=fmt, parameters=[_parameters()])

    with Image.open(io.BytesIO(encoded.data)) as decoded:
        assert decoded.format == fmt.upper()
        assert decoded.size == (72, 40)
    assert (encoded.width, encoded.height) == (72, 40)
    assert encoded.content_type == CONTENT_TYPES[fmt]
    assert encoded.extension == fmt
    assert encoded.size == len(encoded.data)
    assert encoded.sha256 == hashlib.sha256(encoded.data).hexdigest()


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_lossy_formats_carry_the_parameters_in_exif(fmt):
    text = _parameters(prompt=RTL_AND_EMOJI)
    [encoded] = encode_images([_gradient()], fmt=fmt, parameters=[text])

    with Image.open(io.BytesIO(encoded.data)) as decoded:
        comment = decoded.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment == b"UNICODE\0" + text.encode("utf-16-be")


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_same_pixels_give_same_bytes(fmt):
    first = encode_images([_gradient()], fmt=fmt, parameters=["p"])
    second = encode_images([_gradient()], fmt=fmt, parameters=["p"])
    assert first == second


def test_each_image_gets_its_own_parameters():
    texts = [_parameters(seed=1), _parameters(seed=2)]
    encoded = encode_images([_gradient(), _gradient()], fmt="png", parameters=texts)

    assert [_png_parameters(image.data) for image in encoded] == texts
    assert encoded[0].sha256 != encoded[1].sha256


def test_an_image_the_format_cannot_hold_is_a_generation_failure():
    with pytest.raises(GenerationFailed, match="jpeg"):
        encode_images([Image.new("RGBA", (8, 8))], fmt="jpeg", parameters=[""])


def test_counts_must_match():
    with pytest.raises(GenerationFailed):
        encode_images([_gradient()], fmt="png", parameters=[])


def test_parameters_follow_the_a1111_layout():
    assert _parameters() == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: euler_a, CFG scale: 7.5, Seed: 42, Size: 72x40, Model: default"
    )


def test_parameters_omit_an_empty_negative_prompt_and_add_strength_for_img2img():
    text = _parameters(negative_prompt="", guidance_scale=7.0, strength=0.75)
    assert text == (
        "a cat\nSteps: 20, Sampler: euler_a, CFG scale: 7, Seed: 42, Size: 72x40, Model: default, "
        "Denoising strength: 0.75"
    )


def test_parameter_values_with_separators_are_quoted():
    text = _parameters(model="org/model: v1, fp16")
    assert text.endswith('Model: "org/model: v1, fp16"')
