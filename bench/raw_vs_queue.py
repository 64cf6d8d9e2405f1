"""Item 1: the bare diffusers loop against sdqueue end to end (publish → event → image in the bucket), batch 1.

Both run the tiny model at 256x256, 20 steps, 2 torch threads, one after the other, alternating rounds so that
machine noise hits both; the ratio of medians is the queue's overhead. Target: queue/raw >= 0.95.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

from bench._path import bare_rate
from bench._stack import bench_stack, queue_rate, txt2img_spec, wait_until_ready
from sdqueue.config import Settings
from sdqueue.devstack.stack import start_worker, stop_process
from sdqueue.worker.generate import load_generator

SIZE_PX, STEPS, JOBS, ROUNDS = 256, 20, 12, 3
TARGET_RATIO = 0.95


def raw_images_per_s(settings: Settings, *, jobs: int, family: str | None = None) -> float:
    """Images/s of the bare pipeline call, in this process, on the same model and settings as the worker."""
    generator = load_generator(settings.model_sources()["default"], runtime=settings.runtime)
    if family is not None and generator.family.name != family:
        raise SystemExit(f"expected a {family} model, loaded an {generator.family.name} one")
    # A warm-up, as the worker's first job is not measured either.
    generator.generate(txt2img_spec(seeds=(10_000,), size_px=SIZE_PX, steps=STEPS))
    return bare_rate(generator, jobs=jobs, batch=1, size_px=SIZE_PX, steps=STEPS)


def measure(
    settings: Settings, *, jobs: int, rounds: int, family: str | None = None
) -> tuple[list[float], list[float]]:
    """Start a worker on `settings`, then alternate rounds of the bare loop and the queue: images/s of each."""
    with (Path(settings.state_dir) / "worker.log").open("wb") as log:
        worker = start_worker(settings, log=log)
        wait_until_ready(settings)
        try:
            raw, queued = [], []
            for round_index in range(rounds):
                raw.append(raw_images_per_s(settings, jobs=jobs, family=family))
                queued.append(asyncio.run(queue_rate(settings, jobs=jobs, size_px=SIZE_PX, steps=STEPS)))
                print(f"  round {round_index + 1}: raw {raw[-1]:.2f} img/s, queue {queued[-1]:.2f} img/s", flush=True)
        finally:
            stop_process(worker)
    return raw, queued


def report(title: str, raw: list[float], queued: list[float]) -> dict[str, float]:
    """Print the medians and their ratio against the target; return them."""
    ratio = statistics.median(queued) / statistics.median(raw)
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"{title}, batch 1, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {len(raw)} rounds:")
    print(f"  raw median {statistics.median(raw):.2f} img/s, queue median {statistics.median(queued):.2f} img/s")
    print(f"  queue/raw = {ratio:.3f} (target >= {TARGET_RATIO}) {verdict}")
    return {"raw": statistics.median(raw), "queue": statistics.median(queued), "ratio": ratio}


def main() -> dict[str, float]:
    """Run the rounds on the tiny SD 1 model and print each figure and the ratio of medians."""
    with bench_stack(threads=2, prefetch=2) as settings:
        raw, queued = measure(settings, jobs=JOBS, rounds=ROUNDS)
    return report(f"raw vs queue, {JOBS} jobs a round", raw, queued)


if __name__ == "__main__":
    sys.exit(0 if main()["ratio"] >= TARGET_RATIO else 1)
