"""Model families on the real stack: one worker serves an SD 1 and an SDXL model, says which is which in its
heartbeats, and fills what a request leaves out from each model's family; SDXL runs img2img and inpaint too."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdqueue.client import SdqueueClient, new_job_id
from sdqueue.contracts import GenerationRequest, SucceededEvent
from tests.plugins.isolated import IsolatedStack, updated

HEARTBEAT_S = 0.5


def _leaving_size_and_guidance_out(alias: str) -> GenerationRequest:
    fields = {"schema_version": 1, "job_id": new_job_id(), "mode": "txt2img", "prompt": "a lighthouse", "steps": 2}
    return GenerationRequest.model_validate(fields | {"model": alias, "seed": 3})


def _embedded_parameters(isolated: IsolatedStack, key: str) -> str:
    body = isolated.s3_client.get_object(Bucket=isolated.settings.s3.bucket, Key=key)["Body"].read()
    with Image.open(io.BytesIO(body)) as image:
        return str(image.info["parameters"])


async def test_one_worker_serves_sd1_and_sdxl_each_with_its_familys_defaults(
    isolated: IsolatedStack, isolated_client: SdqueueClient, tiny_sdxl_dir: Path
):
    sources = {"small": isolated.settings.model_sources()["default"], "xl": str(tiny_sdxl_dir)}
    # The operator narrows the width to keep the CPU cost low; the height and guidance are the families' own.
    narrow = {alias: {"width": 64} for alias in sources}
    # A small warm-up: this worker warms two models, and the warm-up is not what this test is about.
    settings = updated(isolated.settings, runtime={"warmup_size_px": 64}).model_copy(
        update={"model": None, "models": sources, "model_defaults": narrow, "heartbeat_interval_s": HEARTBEAT_S}
    )
    isolated.start_worker("both", settings)
    for alias in sources:
        await isolated_client.wait_for_workers(alias, timeout_s=120)

    events = [await isolated_client.generate(_leaving_size_and_guidance_out(alias), timeout_s=120) for alias in sources]
    fleet = await isolated_client.fleet(listen_s=3 * HEARTBEAT_S)

    assert all(isinstance(event, SucceededEvent) for event in events), isolated.logs()
    succeeded = [event for event in events if isinstance(event, SucceededEvent)]
    assert [(event.model, event.worker) for event in succeeded] == [("small", "both"), ("xl", "both")]
    assert [(event.images[0].width, event.images[0].height) for event in succeeded] == [(64, 512), (64, 1024)]
    parameters = [_embedded_parameters(isolated, event.images[0].key) for event in succeeded]
    assert "CFG scale: 7.5, " in parameters[0]
    assert "CFG scale: 5, " in parameters[1]
    assert [heartbeat.families for heartbeat in fleet] == [{"small": "sd1", "xl": "sdxl"}]


def _inline_png(image: Image.Image) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"data": base64.b64encode(buffer.getvalue()).decode()}


async def test_sdxl_runs_img2img_and_inpaint_through_the_queue(
    isolated: IsolatedStack, isolated_client: SdqueueClient, tiny_sdxl_dir: Path
):
    settings = updated(isolated.settings, runtime={"warmup_size_px": 64}).model_copy(
        update={"model": None, "models": {"xl": str(tiny_sdxl_dir)}}
    )
    isolated.start_worker("xl-only", settings)
    await isolated_client.wait_for_workers("xl", timeout_s=120)
    init = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    common = {"schema_version": 1, "model": "xl", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4}
    img2img = GenerationRequest.model_validate(
        common | {"job_id": new_job_id(), "mode": "img2img", "init_image": _inline_png(init), "strength": 0.5}
    )
    inpaint = GenerationRequest.model_validate(
        common
        | {"job_id": new_job_id(), "mode": "inpaint", "init_image": _inline_png(init), "mask_image": _inline_png(mask)}
    )

    events = [await isolated_client.generate(request, timeout_s=120) for request in (img2img, inpaint)]

    assert [(event.model, event.images[0].width, event.images[0].height) for event in events] == [("xl", 64, 64)] * 2
    inpainted = np.asarray(Image.open(io.BytesIO(await isolated_client.fetch_image(events[1].images[0]))))
    keep = np.asarray(mask) == 0
    assert (inpainted[keep] == np.asarray(init)[keep]).all(), "black keeps the init image's pixels exactly"
    assert (inpainted[~keep] != np.asarray(init)[~keep]).any(), "white is repainted"
