"""Image uploads (init images, masks): size-capped reading and a cheap check that the bytes are an image we accept."""

from __future__ import annotations

import asyncio
import io
import warnings

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from sdqueue.contracts import ErrorCode
from sdqueue.contracts.errors import BridgeError

READ_CHUNK_BYTES = 256 * 1024
EXTENSIONS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


async def read_upload(upload: UploadFile, *, name: str, max_bytes: int) -> bytes:
    """The bytes of the form's `name` file, read in chunks up to `max_bytes`.

    Raises:
        BridgeError: `image_too_large` past `max_bytes`.
    """
    if upload.size is not None and upload.size > max_bytes:
        raise BridgeError(ErrorCode.IMAGE_TOO_LARGE, f"the {name!r} file is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise BridgeError(ErrorCode.IMAGE_TOO_LARGE, f"the {name!r} file is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_extension(data: bytes, *, what: str, max_pixels: int) -> str:
    """The file extension of a PNG, JPEG or WebP image (`what` names it in errors: "init image", "mask"), after its
    header and structure check out.

    Raises:
        BridgeError: `invalid_image` for anything else, or `image_too_large` for a decompression bomb.
    """
    return await asyncio.to_thread(_inspect, data, what, max_pixels)


def _inspect(data: bytes, what: str, max_pixels: int) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or ""
                width, height = image.size
                image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BridgeError(ErrorCode.IMAGE_TOO_LARGE, f"the {what} has too many pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BridgeError(ErrorCode.INVALID_IMAGE, f"the {what} is not a readable PNG, JPEG or WebP image") from exc
    if image_format not in EXTENSIONS:
        raise BridgeError(ErrorCode.INVALID_IMAGE, f"the {what} is not a PNG, JPEG or WebP image")
    if width * height > max_pixels:
        raise BridgeError(ErrorCode.IMAGE_TOO_LARGE, f"the {what} has too many pixels")
    return EXTENSIONS[image_format]
