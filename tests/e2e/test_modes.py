"""Inpaint, the hires fix and live previews through the real broker, worker and SeaweedFS.

Bodies the contract or the worker refuses (mask on txt2img, hires over the pixel cap, a too short preview interval)
are in tests/faults/test_bad_input.py; the mask key rules are pinned in tests/worker/test_job_path.py.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, FailedEvent, ProgressEvent
from tests.e2e.requests import signed_message, txt2img
from tests.faults import expect_rejection
from tests.plugins.stack import BrokerProbe, WorkerProcess

TIMEOUT_S = 90.0


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def test_inpaint_keeps_the_black_masked_pixels_of_the_init_image_exactly(client: SdqueueClient):
    init = Image.radial_gradient("L").convert("RGB").resize((80, 48))
    mask = Image.new("L", (80, 48), 0)
    ImageDraw.Draw(mask).rectangle((20, 10, 50, 30), fill=255)
    base = txt2img(seed=3)
    init_key = await client.upload_init_image(base.job_id, _png(init), extension="png")
    mask_key = await client.upload_mask_image(base.job_id, _png(mask), extension="png")
    assert mask_key.key == f"inputs/{base.job_id}/mask.png"
    request = base.model_validate(
        {
            **base.model_dump(),
            "mode": "inpaint",
            "init_image": init_key.model_dump(),
            "mask_image": mask_key.model_dump(),
        }
    )

    event = await client.generate(request, timeout_s=TIMEOUT_S)

    output = np.asarray(_decoded(await client.fetch_image(event.images[0])))
    expected = np.asarray(init.resize((64, 64), Image.Resampling.LANCZOS))
    keep = np.asarray(mask.resize((64, 64), Image.Resampling.LANCZOS)) == 0
    assert output.shape == (64, 64, 3)
    assert keep.mean() > 0.5
    assert (output[keep] == expected[keep]).all()
    assert (output[~keep] != expected[~keep]).any(), "the white part is repainted"


async def test_hires_returns_the_final_size_and_the_same_bytes_for_the_same_seed(client: SdqueueClient):
    hires = {"scale": 1.5, "steps": 2, "strength": 0.5}

    first = await client.generate(txt2img(seed=21, hires=hires), timeout_s=TIMEOUT_S)
    again = await client.generate(txt2img(seed=21, hires=hires), timeout_s=TIMEOUT_S)

    image = first.images[0]
    assert (image.width, image.height) == (96, 96)
    assert _decoded(await client.fetch_image(image)).size == (96, 96)
    assert image.sha256 == again.images[0].sha256
    assert await client.fetch_image(image) == await client.fetch_image(again.images[0])


async def test_previews_arrive_as_small_webps_before_the_terminal_event(client: SdqueueClient, probe: BrokerProbe):
    request = txt2img(steps=3, previews=True, preview_interval_s=0.5)
    log = await probe.watch(request.job_id)

    await client.generate(request, timeout_s=TIMEOUT_S)
    await log.wait_for("succeeded", timeout_s=TIMEOUT_S)

    types = [event.type for event in log.events]
    with_preview = [
        index for index, event in enumerate(log.events) if isinstance(event, ProgressEvent) and event.preview
    ]
    assert with_preview, f"no preview among {types}"
    assert max(with_preview) < types.index("succeeded")
    for index in with_preview:
        event = log.events[index]
        assert isinstance(event, ProgressEvent)
        assert event.preview is not None
        picture = _decoded(base64.b64decode(event.preview.data))
        assert picture.format == "WEBP"
        assert picture.size == (event.preview.width, event.preview.height)
        assert max(picture.size) <= 256


async def test_a_mask_key_under_another_jobs_inputs_is_forbidden(
    client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess, stack_settings: Settings
):
    other = txt2img()
    await client.upload_mask_image(other.job_id, _png(Image.new("L", (64, 64), 255)), extension="png")
    init = {"data": base64.b64encode(_png(Image.new("RGB", (64, 64)))).decode()}
    request = txt2img(mode="inpaint", init_image=init, mask_image={"key": f"inputs/{other.job_id}/mask.png"})

    rejection = await expect_rejection(
        signed_message(request.model_dump_json().encode(), job_id=request.job_id, auth=stack_settings.auth),
        job_id=request.job_id,
        code=ErrorCode.FORBIDDEN,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert isinstance(rejection.event, FailedEvent)
    assert rejection.event.error.message.startswith("mask_image.key must be under")
