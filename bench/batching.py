"""Item 1b: micro-batching through sdqueue against the bare diffusers loop at batch 1.

Tiny model, 128x128, 20 steps, 2 torch threads. The queue side runs a worker with prefetch 8 and batches of up
to 8 images; the raw side calls the pipeline one image at a time, and also batch 8 directly (the ceiling).
Target: sdqueue batched >= 2x raw batch 1 in images/s.
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

SIZE_PX, STEPS, JOBS, BATCH, ROUNDS = 128, 20, 32, 8, 3
TARGET_RATIO = 2.0


def raw_rates(settings: Settings) -> tuple[float, float]:
    """(images/s one at a time, images/s in batches of BATCH) for the bare pipeline call."""
    generator = load_generator(settings.model_sources()["default"], runtime=settings.runtime)
    generator.generate(txt2img_spec(seeds=(10_000,), size_px=SIZE_PX, steps=STEPS))
    one = bare_rate(generator, jobs=JOBS, batch=1, size_px=SIZE_PX, steps=STEPS)
    return one, bare_rate(generator, jobs=JOBS, batch=BATCH, size_px=SIZE_PX, steps=STEPS)


def main() -> float:
    """Alternate raw and queued rounds; print medians and the ratio to raw batch 1."""
    with (
        # Prefetch two batches: the next one is already here while the last one is encoded, stored and acked.
        bench_stack(threads=2, prefetch=2 * BATCH, batch_images=BATCH) as settings,
        (Path(settings.state_dir) / "worker.log").open("wb") as log,
    ):
        worker = start_worker(settings, log=log)
        wait_until_ready(settings)
        try:
            raw_one, raw_batch, queued = [], [], []
            for round_index in range(ROUNDS):
                one, batch = raw_rates(settings)
                raw_one.append(one)
                raw_batch.append(batch)
                queued.append(asyncio.run(queue_rate(settings, jobs=JOBS, size_px=SIZE_PX, steps=STEPS)))
                rates = f"raw b1 {one:.2f}, raw b{BATCH} {batch:.2f}, sdqueue {queued[-1]:.2f} img/s"
                print(f"  round {round_index + 1}: {rates}")
        finally:
            stop_process(worker)
    one, batch, queue = (statistics.median(values) for values in (raw_one, raw_batch, queued))
    ratio = queue / one
    print(f"micro-batching, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {JOBS} jobs x {ROUNDS} rounds (medians):")
    print(f"  raw batch 1 {one:.2f} img/s, raw batch {BATCH} {batch:.2f} img/s ({batch / one:.2f}x)")
    print(
        f"  sdqueue batched {queue:.2f} img/s: {ratio:.2f}x raw batch 1 (target >= {TARGET_RATIO}), "
        f"{queue / batch:.2f} of raw batch {BATCH}"
    )
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= TARGET_RATIO else 1)
