"""The worker's own path in-process (validated request bodies → micro-batching → generation → encoding), and
the bare pipeline call it is compared with.

Everything the worker does for a job but the broker and the bucket, on its real code (parse_job, Batcher,
generation_spec, encode_job), so a host without RabbitMQ or S3 (the GPU machine) can still measure it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from bench._stack import txt2img_request, txt2img_spec
from sdqueue.config import BatchSettings, LimitSettings
from sdqueue.worker.batching import Batcher
from sdqueue.worker.generate import ImageGenerator
from sdqueue.worker.pipeline import InputImages, encode_job, generation_spec
from sdqueue.worker.validate import parse_job


async def worker_path_rate(generator: ImageGenerator, *, jobs: int, batch: int, size_px: int, steps: int) -> float:
    """Images/s from validated bodies to encoded PNGs through the worker's batcher, all jobs arriving at once."""
    limits = LimitSettings()
    requests = [txt2img_request(seed=seed, size_px=size_px, steps=steps) for seed in range(jobs)]
    bodies = [(request.job_id, request.model_dump_json(exclude_none=True).encode()) for request in requests]
    batching = BatchSettings(max_images=batch, max_wait_s=0.01, max_pixel_steps=batch * size_px**2 * steps)

    async def one_job(job_id: str, body: bytes, batcher: Batcher) -> int:
        request = parse_job(
            body, job_id=job_id, limits=limits, served_models=("default",), schedulers=generator.scheduler_names
        )
        generated = await batcher.generate(
            generation_spec(request, InputImages(), limits=limits),
            on_step=lambda _step, _total: None,
            should_stop=lambda: False,
        )
        encoded = await asyncio.to_thread(encode_job, request, generated)
        return len(encoded)

    # One generation thread, as in the worker.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate") as executor:
        batcher = Batcher(generator, executor=executor, batching=batching)
        runner = asyncio.create_task(batcher.run())
        try:
            started = time.perf_counter()
            counts = await asyncio.gather(*(one_job(job_id, body, batcher) for job_id, body in bodies))
            elapsed = time.perf_counter() - started
        finally:
            runner.cancel()
    return sum(counts) / elapsed


def bare_rate(generator: ImageGenerator, *, jobs: int, batch: int, size_px: int, steps: int) -> float:
    """Images/s of the bare pipeline call for `jobs` images (seeds 0..jobs-1) in batches of `batch`."""
    started = time.perf_counter()
    for first in range(0, jobs, batch):
        seeds = tuple(range(first, min(first + batch, jobs)))
        generator.generate(txt2img_spec(seeds=seeds, size_px=size_px, steps=steps))
    return jobs / (time.perf_counter() - started)
