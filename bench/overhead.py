"""The broker and the bucket's cost per job: sdqueue end to end against the worker's own path, side by side.

Tiny model at 128x128 and 2 steps, so that generation does not drown the cost (at 512x512 this CPU's tiny VAE
decode alone takes about a second an image); batches of up to 8, 2 torch threads. The queue side publishes every
job at once and waits for the last succeeded event (each image in the bucket); the path side runs the same bodies
through `bench._path` in this process (validate, batch, generate, encode). Rounds alternate, and cost per job is
1/queue - 1/path in medians. The GPU host has neither broker nor bucket, so docs/benchmarks.md adds this cost to
its worker path to state the end-to-end figure. Here the client, RabbitMQ and SeaweedFS share the worker's 2 cores
and nothing overlaps in the sum, which makes it an upper bound for a GPU host.

    python -m bench.overhead [--gpu-path IMAGES_PER_S]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

from bench._path import worker_path_rate
from bench._stack import bench_stack, queue_rate, wait_until_ready
from sdqueue.devstack.stack import start_worker, stop_process
from sdqueue.worker.generate import load_generator

SIZE_PX, STEPS, JOBS, BATCH, ROUNDS = 128, 2, 64, 8, 5


def main(argv: list[str] | None = None) -> float:
    """Alternate path and queue rounds; print medians and the cost per job in ms, which it returns."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-path", type=float, help="the GPU host's worker-path images/s, to state end to end")
    args = parser.parse_args(argv)
    with (
        bench_stack(threads=2, prefetch=2 * BATCH, batch_images=BATCH) as settings,
        (Path(settings.state_dir) / "worker.log").open("wb") as log,
    ):
        worker = start_worker(settings, log=log)
        wait_until_ready(settings)
        generator = load_generator(settings.model_sources()["default"], runtime=settings.runtime)
        asyncio.run(worker_path_rate(generator, jobs=BATCH, batch=BATCH, size_px=SIZE_PX, steps=STEPS))  # warm-up
        try:
            path_rates, queue_rates = [], []
            for round_index in range(ROUNDS):
                rate = worker_path_rate(generator, jobs=JOBS, batch=BATCH, size_px=SIZE_PX, steps=STEPS)
                path_rates.append(asyncio.run(rate))
                queue_rates.append(asyncio.run(queue_rate(settings, jobs=JOBS, size_px=SIZE_PX, steps=STEPS)))
                print(f"  round {round_index + 1}: path {path_rates[-1]:.2f}, queue {queue_rates[-1]:.2f} img/s")
        finally:
            stop_process(worker)
    path, queue = statistics.median(path_rates), statistics.median(queue_rates)
    cost_ms = (1 / queue - 1 / path) * 1000
    print(f"broker and bucket per job, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {JOBS} jobs x {ROUNDS} rounds (medians):")
    print(f"  worker path {path:.2f} img/s, end to end {queue:.2f} img/s ({queue / path:.3f}): {cost_ms:.1f} ms a job")
    if args.gpu_path:
        stated = 1 / (1 / args.gpu_path + cost_ms / 1000)
        print(f"  GPU worker path {args.gpu_path:.2f} img/s + {cost_ms:.1f} ms a job = {stated:.2f} img/s end to end")
    return cost_ms


if __name__ == "__main__":
    main()
