"""Model families on the real stack: one worker serves an SD 1 and an SDXL model, says which is which in its
heartbeats, and fills what a request leaves out from each model's family."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

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
