"""Init images: base64 decoding, format and size checks, and decompression-bomb guards."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import pytest
from PIL import Image

from sdqueue.config import LimitSettings
from sdqueue.contracts import ErrorCode
from sdqueue.contracts.errors import SdqueueError
from sdqueue.worker.inputs import decode_inline_image, load_init_image

LIMITS = LimitSettings(max_init_image_pixels=1024 * 1024, max_init_image_bytes=1024 * 1024)


def _image_bytes(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb as far as any decoder knows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _code(data: bytes) -> ErrorCode:
    with pytest.raises(SdqueueError) as caught:
        load_init_image(data, limits=LIMITS)
    return ErrorCode(caught.value.code)  # a wire code, never a bridge-only one


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("PNG", "L")])
def test_allowed_formats_decode_to_rgb(fmt: str, mode: str):
    image = load_init_image(_image_bytes((40, 24), fmt, mode), limits=LIMITS)

    assert (image.mode, image.size) == ("RGB", (40, 24))


def test_bomb_header_is_refused_before_decoding():
    assert _code(_png_claiming(50_000, 50_000)) is ErrorCode.IMAGE_TOO_LARGE


def test_random_bytes_and_other_formats_are_invalid_images():
    assert _code(os.urandom(4096)) is ErrorCode.INVALID_IMAGE
    assert _code(_image_bytes((8, 8), "GIF", "P")) is ErrorCode.INVALID_IMAGE
    assert _code(_image_bytes((64, 64), "PNG")[:60]) is ErrorCode.INVALID_IMAGE


def test_oversized_file_is_too_large():
    assert _code(b"\0" * (LIMITS.max_init_image_bytes + 1)) is ErrorCode.IMAGE_TOO_LARGE


def test_inline_base64_round_trip_and_errors():
    data = _image_bytes((16, 16), "PNG")
    assert decode_inline_image(base64.b64encode(data).decode(), max_bytes=len(data)) == data

    with pytest.raises(SdqueueError) as malformed:
        decode_inline_image("not*base64!", max_bytes=1024)
    with pytest.raises(SdqueueError) as too_big:
        decode_inline_image(base64.b64encode(b"\0" * 2048).decode(), max_bytes=1024)

    assert malformed.value.code is ErrorCode.INVALID_IMAGE
    assert too_big.value.code is ErrorCode.IMAGE_TOO_LARGE
