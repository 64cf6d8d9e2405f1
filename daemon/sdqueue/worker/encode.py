"""Encode generated images to PNG, WebP or JPEG bytes, with the generation parameters embedded."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, PngImagePlugin

from sdqueue.contracts import CONTENT_TYPES, OutputFormat, PreviewImage
from sdqueue.contracts.errors import GenerationFailed

LOSSY_QUALITY = 90
PREVIEW_QUALITY = 60
# EXIF UserComment with this 8-byte prefix holds UTF-16 text (the layout piexif and A1111 use).
_EXIF_UNICODE_PREFIX = b"UNICODE\0"


@dataclass(frozen=True, kw_only=True)
class EncodedImage:
    """One encoded image, ready to upload."""

    data: bytes
    content_type: str
    extension: str
    sha256: str
    width: int
    height: int

    @property
    def size(self) -> int:
        """The encoded size in bytes."""
        return len(self.data)


def encode_images(images: Sequence[Image.Image], *, fmt: OutputFormat, parameters: Sequence[str]) -> list[EncodedImage]:
    """Encode each image with its parameters text (`parameters[i]` for image i); same pixels, same bytes.

    PNG carries the text in a `parameters` text chunk, WebP and JPEG in the EXIF UserComment.

    Raises:
        GenerationFailed: an image could not be encoded, or the counts differ.
    """
    if len(images) != len(parameters):
        raise GenerationFailed(f"got {len(images)} images but {len(parameters)} parameter texts")
    return [_encode(image, fmt=fmt, text=text) for image, text in zip(images, parameters, strict=True)]


def format_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    guidance_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    strength: float | None = None,
    extras: Mapping[str, str] | None = None,
) -> str:
    """Return the parameters text in the AUTOMATIC1111 layout that image viewers and web UIs read; `extras` are
    further fields after the usual ones."""
    fields = {
        "Steps": str(steps),
        "Sampler": sampler,
        "CFG scale": f"{guidance_scale:g}",
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if strength is not None:
        fields["Denoising strength"] = f"{strength:g}"
    fields |= extras or {}
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def encode_preview(image: Image.Image) -> PreviewImage:
    """A progress event's preview: the picture (at most 256 px on the long side) as a small lossy WebP, base64."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=PREVIEW_QUALITY)
    return PreviewImage(width=image.width, height=image.height, data=base64.b64encode(buffer.getvalue()).decode())


def _quote(value: str) -> str:
    # The last line is split on ", " and ": ", so values holding those are JSON-quoted, as A1111 does.
    if any(mark in value for mark in (",", ":", "\n", '"')):
        return json.dumps(value, ensure_ascii=False)
    return value


def _encode(image: Image.Image, *, fmt: OutputFormat, text: str) -> EncodedImage:
    buffer = io.BytesIO()
    try:
        if fmt == "png":
            image.save(buffer, format="PNG", pnginfo=_png_text(text))
        else:
            image.save(buffer, format=fmt.upper(), quality=LOSSY_QUALITY, exif=_exif_comment(text))
    except (OSError, ValueError, KeyError) as exc:
        raise GenerationFailed(f"the image could not be encoded as {fmt}") from exc
    data = buffer.getvalue()
    return EncodedImage(
        data=data,
        content_type=CONTENT_TYPES[fmt],
        extension=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
    )


def _png_text(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    # tEXt when the text is Latin-1, else iTXt (UTF-8): emoji and RTL prompts survive.
    info.add_text("parameters", text)
    return info


def _exif_comment(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _EXIF_UNICODE_PREFIX + text.encode("utf-16-be")
    return exif.tobytes()
