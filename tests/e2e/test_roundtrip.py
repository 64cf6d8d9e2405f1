"""A signed request through the real broker, worker and SeaweedFS, and the image back."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import GenerationRequest, InitImageData, SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.stack import BrokerProbe


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _img2img(job_id_source: GenerationRequest, **fields: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {**job_id_source.model_dump(), "mode": "img2img", "strength": 0.6, **fields}
    )


async def test_txt2img_image_lands_in_bucket_and_matches_record(client: SdqueueClient, probe: BrokerProbe):
    request = txt2img(width=96, height=64, num_images=2, seed=7)
    events = await probe.watch(request.job_id)

    event = await client.generate(request, timeout_s=60)

    assert [image.key for image in event.images] == [
        f"outputs/{request.job_id}/0.png",
        f"outputs/{request.job_id}/1.png",
    ]
    assert [image.seed for image in event.images] == [7, 8]
    for image in event.images:
        decoded = Image.open(io.BytesIO(await client.fetch_image(image)))
        assert decoded.format == "PNG"
        assert decoded.size == (96, 64)
        assert "a dog with a hat" in decoded.info["parameters"]
    assert await client.read_record(request.job_id) == event
    assert events.events[0].type == "started"
    assert len(events.of_type("succeeded")) == 1


async def test_same_seed_gives_byte_identical_png(client: SdqueueClient):
    first = await client.generate(txt2img(seed=1234), timeout_s=60)
    second = await client.generate(txt2img(seed=1234), timeout_s=60)
    other = await client.generate(txt2img(seed=1235), timeout_s=60)

    first_bytes = await client.fetch_image(first.images[0])
    assert first_bytes == await client.fetch_image(second.images[0])
    assert first.images[0].sha256 == second.images[0].sha256 != other.images[0].sha256


async def test_null_seed_is_derived_from_job_id(client: SdqueueClient):
    request = txt2img(seed=None)

    event = await client.generate(request, timeout_s=60)
    again = await client.generate(txt2img(job_id=f"{request.job_id}x", seed=event.images[0].seed), timeout_s=60)

    assert event.images[0].sha256 == again.images[0].sha256


async def test_img2img_with_inline_init_image(client: SdqueueClient):
    init = InitImageData(data=base64.b64encode(_png(80, 48)).decode())
    request = _img2img(txt2img(width=64, height=96), init_image=init)

    event = await client.generate(request, timeout_s=60)

    image = Image.open(io.BytesIO(await client.fetch_image(event.images[0])))
    assert image.size == (64, 96)


async def test_img2img_with_init_image_key(client: SdqueueClient):
    base = txt2img(width=128, height=64, output_format="webp")
    key = await client.upload_init_image(base.job_id, _png(128, 64), extension="png")
    assert key.key == f"inputs/{base.job_id}/init.png"

    event = await client.generate(_img2img(base, init_image=key.model_dump()), timeout_s=60)

    image = Image.open(io.BytesIO(await client.fetch_image(event.images[0])))
    assert (image.format, image.size) == ("WEBP", (128, 64))
    assert event.images[0].content_type == "image/webp"


async def test_bucket_refuses_anonymous_and_wrong_key_reads(client: SdqueueClient, stack_settings: Settings):
    event = await client.generate(txt2img(), timeout_s=60)
    image = event.images[0]
    endpoint = stack_settings.s3.endpoint_url
    assert isinstance(event, SucceededEvent)

    async with httpx.AsyncClient() as http:
        anonymous = await http.get(f"{endpoint}/{stack_settings.s3.bucket}/{image.key}")
        tampered = await http.get(image.url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
        signed = await http.get(image.url)

    assert anonymous.status_code == 403
    assert tampered.status_code == 403
    assert signed.status_code == 200
