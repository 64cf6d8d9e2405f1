"""Scale-out: 1, 2 and 4 worker processes on one queue, no job lost or duplicated, throughput per count.

Each worker gets cores / workers torch threads (at least 1), so the machine is never oversubscribed; the
table shows throughput growing until the cores are full. Tiny model, 128x128, 10 steps, 48 jobs per run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

from bench._stack import bench_stack, txt2img_request
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import SucceededEvent
from sdqueue.devstack.stack import start_worker, stop_process
from sdqueue.storage import make_s3_client

WORKER_COUNTS, JOBS, SIZE_PX, STEPS = (1, 2, 4), 48, 128, 10


async def _run_jobs(settings: Settings, workers: int) -> float:
    """Jobs/s for one run; asserts every job succeeded once with exactly its own objects."""
    async with SdqueueClient(settings, subject="bench") as client:
        await client.wait_for_workers("default", timeout_s=180, minimum=workers)
        requests = [txt2img_request(seed=seed, size_px=SIZE_PX, steps=STEPS) for seed in range(JOBS)]
        started = time.perf_counter()
        await asyncio.gather(*(client.submit(request) for request in requests))
        events = [await client.wait(request.job_id, timeout_s=600) for request in requests]
        elapsed = time.perf_counter() - started
    assert all(isinstance(event, SucceededEvent) for event in events), "a job did not succeed"
    keys = _output_keys(settings)
    expected = {f"outputs/{request.job_id}/0.png" for request in requests}
    assert expected <= keys, "an image is missing"
    assert Counter(event.job_id for event in events) == Counter(request.job_id for request in requests)
    return JOBS / elapsed


def _output_keys(settings: Settings) -> set[str]:
    client = make_s3_client(settings.s3)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.bucket, Prefix="outputs/")
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def main() -> dict[int, float]:
    """Print the table: workers, threads each, jobs/s, speed-up over one worker."""
    cores = os.cpu_count() or 1
    rates: dict[int, float] = {}
    for workers in WORKER_COUNTS:
        threads = max(1, cores // workers)
        with bench_stack(threads=threads, prefetch=1) as settings:
            logs = [(Path(settings.state_dir) / f"worker-{i}.log").open("wb") for i in range(workers)]
            processes = [start_worker(settings, log=log) for log in logs]
            try:
                rates[workers] = asyncio.run(_run_jobs(settings, workers))
            finally:
                for process in processes:
                    stop_process(process)
                for log in logs:
                    log.close()
    print(f"scale-out on {cores} cores, {JOBS} jobs of {SIZE_PX}x{SIZE_PX}, {STEPS} steps (none lost or duplicated):")
    print("  workers  threads each  jobs/s  vs 1 worker")
    for workers, rate in rates.items():
        print(f"  {workers:7d}  {max(1, cores // workers):12d}  {rate:6.2f}  {rate / rates[1]:10.2f}x")
    return rates


if __name__ == "__main__":
    main()
    sys.exit(0)
