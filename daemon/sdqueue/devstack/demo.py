"""`sdqueue demo`: the whole stack on loopback with the tiny default model, and one request through it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from sdqueue.client import SdqueueClient, describe_saved_images, new_job_id, save_images
from sdqueue.config import Settings
from sdqueue.contracts import SCHEMA_VERSION, GenerationRequest
from sdqueue.devstack.rabbit import ensure_rabbitmq
from sdqueue.devstack.stack import start_storage, start_worker, stop_process, with_fresh_secrets

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT_S = 180.0


def run_demo(settings: Settings, *, prompt: str) -> int:
    """Start what is missing, generate one image, print where it is, stop what was started; returns 0."""
    started = time.monotonic()
    ensure_rabbitmq(settings.broker.url.get_secret_value())
    demo_dir = settings.state_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    print("starting SeaweedFS (S3, keys enforced) on loopback …")
    server, settings = start_storage(with_fresh_secrets(settings), data_dir=demo_dir / "seaweed")
    with server, (demo_dir / "worker.log").open("wb") as worker_log:
        print(f"starting a worker (tiny model in {settings.tiny_model_dir}; log in {worker_log.name}) …")
        worker = start_worker(settings, log=worker_log)
        try:
            asyncio.run(_one_request(settings, prompt=prompt, output_dir=demo_dir))
        finally:
            code = stop_process(worker)
            print(f"worker stopped (exit {code})")
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0


async def _one_request(settings: Settings, *, prompt: str, output_dir: Path) -> None:
    async with SdqueueClient(settings, subject="demo") as client:
        await client.wait_for_workers("default", timeout_s=WORKER_READY_TIMEOUT_S)
        request = GenerationRequest(
            schema_version=SCHEMA_VERSION,
            job_id=new_job_id(),
            mode="txt2img",
            prompt=prompt,
            width=256,
            height=256,
            steps=20,
        )
        print(f"sending txt2img {prompt!r} …")
        event = await client.generate(request, timeout_s=WORKER_READY_TIMEOUT_S)
        paths = await save_images(client, event, output=output_dir / f"{request.job_id}.png")
        print(describe_saved_images(event, paths))
