"""A throwaway loopback stack for benchmarks: its own vhost, SeaweedFS and worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sdqueue.client import SdqueueClient, new_job_id
from sdqueue.config import BatchSettings, BrokerSettings, RuntimeSettings, Settings
from sdqueue.contracts import SCHEMA_VERSION, GenerationRequest
from sdqueue.devstack import create_vhost, delete_vhost, ensure_rabbitmq
from sdqueue.devstack.stack import start_storage, with_fresh_secrets, worker_environment
from sdqueue.worker.generate import GenerationSpec, ensure_tiny_model

PROMPT = "a lighthouse at dusk"


async def _until_ready(settings: Settings) -> None:
    async with SdqueueClient(settings, subject="bench") as client:
        await client.wait_for_workers("default", timeout_s=180)


def wait_until_ready(settings: Settings) -> None:
    """Block until a worker consumes the default queue, so its start-up does not share the CPU with a round."""
    asyncio.run(_until_ready(settings))


def sdqueue_cli(arguments: list[str], *, environment: dict[str, str], log: IO[bytes], stdin: str = "") -> None:
    """Run one `sdqueue` command as an operator would (output to `log`); a failure stops the benchmark."""
    subprocess.run(
        [sys.executable, "-m", "sdqueue", *arguments],
        env=environment,
        input=f"{stdin}\n".encode(),
        stdout=log,
        stderr=log,
        check=True,
    )


def prepare_bridge(settings: Settings, *, user: str, password: str, log: IO[bytes]) -> None:
    """Bring the bridge's database to this code's schema and add one user, through the CLI."""
    environment = worker_environment(settings)
    sdqueue_cli(["bridge", "db", "upgrade"], environment=environment, log=log)
    sdqueue_cli(["users", "add", user, "--password-stdin"], environment=environment, log=log, stdin=password)


@contextlib.contextmanager
def bench_stack(*, threads: int = 2, prefetch: int = 2, batch_images: int = 1) -> Iterator[Settings]:
    """Settings for a fresh vhost and SeaweedFS with the tiny model built; everything is removed afterwards."""
    ensure_rabbitmq(BrokerSettings().url.get_secret_value())
    vhost = f"sdqueue-bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="sdqueue-bench-") as scratch:
        state = Path(scratch)
        model_dir = ensure_tiny_model(state / "models" / "tiny")
        base = Settings(
            state_dir=state,
            model=str(model_dir),
            broker=BrokerSettings(url=create_vhost(vhost), prefetch=prefetch),
            batching=BatchSettings(max_images=batch_images, max_wait_s=0.05),
            runtime=RuntimeSettings(device="cpu", threads=threads),
        )
        server, settings = start_storage(with_fresh_secrets(base), data_dir=state / "weed")
        try:
            with server:
                yield settings
        finally:
            delete_vhost(vhost)


def txt2img_spec(*, seeds: tuple[int, ...], size_px: int, steps: int) -> GenerationSpec:
    """The spec the bare loop runs: what the worker builds from `txt2img_request` with the same numbers."""
    return GenerationSpec(
        mode="txt2img",
        prompt=PROMPT,
        negative_prompt="",
        width=size_px,
        height=size_px,
        steps=steps,
        guidance_scale=7.5,
        seeds=seeds,
        scheduler=None,
        strength=0.75,
        init_image=None,
    )


def txt2img_request(*, seed: int, size_px: int, steps: int) -> GenerationRequest:
    """The request sdqueue runs for the same work as `txt2img_spec` with one seed."""
    return GenerationRequest(
        schema_version=SCHEMA_VERSION,
        job_id=new_job_id(),
        mode="txt2img",
        prompt=PROMPT,
        width=size_px,
        height=size_px,
        steps=steps,
        seed=seed,
    )


async def queue_rate(settings: Settings, *, jobs: int, size_px: int, steps: int) -> float:
    """Images/s through sdqueue from the first publish to the last succeeded event, all jobs published at once."""
    async with SdqueueClient(settings, subject="bench") as client:
        await client.generate(txt2img_request(seed=10_000, size_px=size_px, steps=steps), timeout_s=120)  # warm-up
        requests = [txt2img_request(seed=seed, size_px=size_px, steps=steps) for seed in range(jobs)]
        started = time.perf_counter()
        await asyncio.gather(*(client.submit(request) for request in requests))
        for request in requests:
            await client.wait(request.job_id, timeout_s=300)
        return jobs / (time.perf_counter() - started)
