"""Decode an input image (img2img init image, inpaint mask), inline or fetched by key, with decompression-bomb
guards."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Literal

from PIL import Image, UnidentifiedImageError

from sdqueue.config import LimitSettings
from sdqueue.contracts import JOB_ID_PATTERN
from sdqueue.contracts.errors import Forbidden, ImageTooLarge, InvalidImage

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
InputField = Literal["init_image", "mask_image"]
_LABELS: dict[InputField, str] = {"init_image": "init image", "mask_image": "mask image"}
_JOB_ID = re.compile(JOB_ID_PATTERN)


def key_forbidden(field: InputField) -> str:
    """One answer for every key the caller may not read, so it cannot learn which keys exist."""
    return f"{field}.key must be under inputs/<job_id>/ of this job or outputs/<job>/ of your own job"


def input_key_job(key: str, *, job_id: str, field: InputField) -> str:
    """Return the job an input image key belongs to: this job for `inputs/<job_id>/…`, the named one for
    `outputs/<job>/…` (whose record must then have the caller as its owner).

    Raises:
        Forbidden: any other key, with the same message whether or not an object is stored there.
    """
    prefix, _, rest = key.partition("/")
    named, _, name = rest.partition("/")
    if name and prefix == "inputs" and named == job_id:
        return job_id
    if name and prefix == "outputs" and _JOB_ID.match(named):
        return named
    raise Forbidden(key_forbidden(field))


def decode_inline_image(data: str, *, max_bytes: int, field: InputField = "init_image") -> bytes:
    """Decode the base64 of an inline input image, refusing oversized data before decoding it.

    Raises:
        ImageTooLarge: the decoded size would exceed `max_bytes`.
        InvalidImage: the text is not valid base64.
    """
    if len(data) // 4 * 3 > max_bytes + 2:
        raise ImageTooLarge(f"inline {_LABELS[field]} is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{field}.data is not valid base64") from exc
    if len(raw) > max_bytes:
        raise ImageTooLarge(f"inline {_LABELS[field]} is larger than {max_bytes} bytes")
    return raw


def load_init_image(data: bytes, *, limits: LimitSettings, field: InputField = "init_image") -> Image.Image:
    """Decode PNG, JPEG or WebP bytes to RGB, checking the pixel count from the header before decoding.

    Raises:
        ImageTooLarge: the file or its pixel count is over the limits.
        InvalidImage: the bytes are not an image of an allowed format.
    """
    label = _LABELS[field]
    if len(data) > limits.max_init_image_bytes:
        raise ImageTooLarge(f"{label} is larger than {limits.max_init_image_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > limits.max_init_image_pixels:
                raise ImageTooLarge(f"{label} {width}x{height} has more than {limits.max_init_image_pixels} pixels")
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{label} is a decompression bomb") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{label} is not a readable PNG, JPEG or WebP") from exc
