"""Inpaint, the hires fix and live previews through the bridge, on the real broker, SeaweedFS, worker and database."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aio_pika
import httpx
import numpy as np
import pytest_asyncio
from PIL import Image, ImageDraw

from sdqueue.config import Settings
from sdqueue.contracts.topology import REQUESTS_EXCHANGE, requests_queue
from tests.bridge.test_jobs import TINY, assert_error, wait

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

FORM = {key: str(value) for key, value in TINY.items()}
REFUSING_MODEL = "refusing"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gradient_and_box_mask() -> tuple[Image.Image, Image.Image]:
    """An 80x48 init image and its mask: a white box to repaint, the rest black (kept)."""
    init = Image.radial_gradient("L").convert("RGB").resize((80, 48))
    mask = Image.new("L", (80, 48), 0)
    ImageDraw.Draw(mask).rectangle((20, 10, 50, 30), fill=255)
    return init, mask


def inputs(s3_client: S3Client) -> set[str]:
    from tests.plugins.services import TEST_BUCKET

    listing = s3_client.list_objects_v2(Bucket=TEST_BUCKET, Prefix="inputs/")
    return {entry.get("Key", "") for entry in listing.get("Contents", [])}


async def post_inpaint(
    api: httpx.AsyncClient, headers: dict[str, str], *, image: bytes, mask: bytes, **fields: str
) -> httpx.Response:
    return await api.post(
        "/v1/inpaint",
        data={"prompt": "a red door", **FORM, **fields},
        files={"image": ("init.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")},
        headers=headers,
    )


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


@pytest_asyncio.fixture
async def refusing_model(stack_settings: Settings) -> AsyncIterator[str]:
    """A model alias whose queue exists but refuses every message: the bridge's publish fails after its uploads."""
    url = stack_settings.broker.url.get_secret_value()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            requests_queue(REFUSING_MODEL), arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await queue.bind(REQUESTS_EXCHANGE, routing_key=REFUSING_MODEL)
    yield REFUSING_MODEL
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(requests_queue(REFUSING_MODEL))


async def test_inpaint_keeps_the_black_masked_pixels_and_stores_both_inputs(
    api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client
):
    init, mask = gradient_and_box_mask()

    response = await post_inpaint(api, alice, image=png(init), mask=png(mask), seed="3", mask_blur="0")

    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    done = await wait(api, alice, job_id)
    assert done["status"] == "succeeded", done
    assert done["mode"] == "inpaint"
    async with httpx.AsyncClient() as plain:
        body = (await plain.get(done["result"]["images"][0]["url"])).content
    output = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    expected = np.asarray(init.resize((64, 64), Image.Resampling.LANCZOS))
    keep = np.asarray(mask.resize((64, 64), Image.Resampling.LANCZOS)) == 0
    assert output.shape == (64, 64, 3)
    assert keep.mean() > 0.5
    assert (output[keep] == expected[keep]).all()
    assert (output[~keep] != expected[~keep]).any(), "the white part is repainted"
    assert {key for key in inputs(s3_client) if job_id in key} == {
        f"inputs/{job_id}/init.png",
        f"inputs/{job_id}/mask.png",
    }


async def test_a_bad_mask_is_refused_like_a_bad_init_image_and_nothing_is_stored(
    api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client, bridge_settings: Settings
):
    init, mask = gradient_and_box_mask()
    huge = Image.new("1", (4200, 4200))  # a few KiB as PNG, over the pixel cap once decoded
    before = inputs(s3_client)

    not_an_image = await post_inpaint(api, alice, image=png(init), mask=b"GIF89a not really")
    too_many_pixels = await post_inpaint(api, alice, image=png(init), mask=png(huge))
    too_many_bytes = await post_inpaint(
        api, alice, image=png(init), mask=png(mask) + b"\0" * bridge_settings.bridge.max_upload_bytes
    )
    missing = await api.post(
        "/v1/inpaint", data={"prompt": "x", **FORM}, files={"image": ("i.png", png(init), "image/png")}, headers=alice
    )
    bad_blur = await post_inpaint(api, alice, image=png(init), mask=png(mask), mask_blur="65")

    assert_error(not_an_image, 400, "invalid_image")
    assert "mask" in not_an_image.json()["error"]["message"]
    assert_error(too_many_pixels, 413, "image_too_large")
    assert "mask" in too_many_pixels.json()["error"]["message"]
    assert_error(too_many_bytes, 413, "image_too_large")
    assert "mask" in too_many_bytes.json()["error"]["message"]
    assert_error(missing, 400, "invalid_request")
    assert_error(bad_blur, 400, "invalid_request")
    assert inputs(s3_client) == before


async def test_a_refused_inpaint_stores_nothing(api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client):
    init, mask = gradient_and_box_mask()
    before = inputs(s3_client)

    refused = [
        await post_inpaint(api, alice, image=png(init), mask=png(mask), **fields)
        for fields in ({"width": "512", "height": "512"}, {"model": "no-such-model"}, {"strength": "0"})
    ]

    assert [response.status_code for response in refused] == [422, 404, 400]
    assert inputs(s3_client) == before


async def test_both_uploads_are_removed_when_the_publish_fails(
    api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client, refusing_model: str
):
    init, mask = gradient_and_box_mask()
    before = inputs(s3_client)
    jobs_before = await job_ids(api, alice)

    response = await post_inpaint(api, alice, image=png(init), mask=png(mask), model=refusing_model)

    assert_error(response, 503, "unavailable")
    assert inputs(s3_client) == before
    assert await job_ids(api, alice) == jobs_before


async def job_ids(api: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    listing = await api.get("/v1/jobs", params={"limit": 100}, headers=headers)
    return [job["job_id"] for job in listing.json()["jobs"]]


async def test_hires_through_txt2img_returns_the_final_size(api: httpx.AsyncClient, alice: dict[str, str]):
    body = {"prompt": "a tower", **TINY, "seed": 5, "hires": {"scale": 2, "steps": 2, "strength": 0.5}}

    response = await api.post("/v1/txt2img", json=body, headers=alice)

    assert response.status_code == 202, response.text
    done = await wait(api, alice, response.json()["job_id"])
    assert done["status"] == "succeeded", done
    image = done["result"]["images"][0]
    assert (image["width"], image["height"]) == (128, 128)
    async with httpx.AsyncClient() as plain:
        assert Image.open(io.BytesIO((await plain.get(image["url"])).content)).size == (128, 128)


async def test_a_bad_hires_or_preview_field_is_an_invalid_request(api: httpx.AsyncClient, alice: dict[str, str]):
    for extra in (
        {"hires": {"scale": 5, "steps": 2}},
        {"hires": {"scale": 2}},
        {"preview_interval_s": 1.0},
        {"previews": True, "preview_interval_s": 0},
    ):
        response = await api.post("/v1/txt2img", json={"prompt": "x", **TINY, **extra}, headers=alice)
        assert_error(response, 400, "invalid_request")
    over_cap = await api.post(
        "/v1/txt2img", json={"prompt": "x", **TINY, "width": 128, "hires": {"scale": 4, "steps": 2}}, headers=alice
    )
    assert_error(over_cap, 422, "limits_exceeded")


async def test_the_event_stream_relays_previews_as_webp(api: httpx.AsyncClient, alice: dict[str, str]):
    body = {"prompt": "a harbour", "width": 128, "height": 128, "steps": 30, "previews": True}
    job_id = (await api.post("/v1/txt2img", json=body, headers=alice)).json()["job_id"]

    response = await api.get(f"/v1/jobs/{job_id}/events", headers=alice)

    events = sse_events(response.text)
    assert events[-1]["type"] == "succeeded"
    previews = [event["preview"] for event in events if event["type"] == "progress" and event.get("preview")]
    assert previews, [event["type"] for event in events]
    for preview in previews:
        picture = Image.open(io.BytesIO(base64.b64decode(preview["data"])))
        assert picture.format == "WEBP"
        assert picture.size == (preview["width"], preview["height"])
        assert preview["content_type"] == "image/webp"


async def test_img2img_takes_previews_too(api: httpx.AsyncClient, alice: dict[str, str]):
    response = await api.post(
        "/v1/img2img",
        data={"prompt": "a boat", "width": "128", "height": "128", "steps": "30", "previews": "true"},
        files={"image": ("init.png", png(gradient_and_box_mask()[0]), "image/png")},
        headers=alice,
    )

    assert response.status_code == 202, response.text
    events = sse_events((await api.get(f"/v1/jobs/{response.json()['job_id']}/events", headers=alice)).text)
    assert any(event["type"] == "progress" and event.get("preview") for event in events), events[-1]
