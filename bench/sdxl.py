"""The tiny SDXL model: the bare diffusers loop against sdqueue end to end (publish → event → image in the bucket).

As bench.raw_vs_queue, on the SDXL shape (two text encoders, the text-time embedding): 256x256, 20 steps, batch 1,
2 torch threads, rounds alternated so that machine noise hits both; the ratio of medians is the queue's overhead.
The queued requests leave guidance out, so the worker fills SDXL's 5.0; the bare loop runs 7.5, which costs the
same (any guidance above 1 runs the UNet on prompt and negative side by side). Target: queue/raw >= 0.95.

    python -m bench.sdxl
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
from sdqueue.worker.generate import build_tiny_model, load_generator

SIZE_PX, STEPS, JOBS, ROUNDS = 256, 20, 12, 3
TARGET_RATIO = 0.95


def raw_images_per_s(settings: Settings) -> float:
    """Images/s of the bare pipeline call, in this process, on the same model and settings as the worker."""
    generator = load_generator(settings.model_sources()["default"], runtime=settings.runtime)
    if generator.family.name != "sdxl":
        raise SystemExit(f"expected the tiny SDXL model, loaded an {generator.family.name} one")
    # A warm-up, as the worker's first job is not measured either.
    generator.generate(txt2img_spec(seeds=(10_000,), size_px=SIZE_PX, steps=STEPS))
    return bare_rate(generator, jobs=JOBS, batch=1, size_px=SIZE_PX, steps=STEPS)


def main() -> dict[str, float]:
    """Run the rounds and print each figure and the ratio of medians."""
    with bench_stack(threads=2, prefetch=2) as stack:
        model = build_tiny_model(Path(stack.state_dir) / "models" / "tiny-sdxl", family="sdxl")
        settings = stack.model_copy(update={"model": str(model)})
        with (Path(settings.state_dir) / "worker.log").open("wb") as log:
            worker = start_worker(settings, log=log)
            wait_until_ready(settings)
            try:
                raw, queued = _rounds(settings)
            finally:
                stop_process(worker)
    ratio = statistics.median(queued) / statistics.median(raw)
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"tiny SDXL raw vs queue, batch 1, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {JOBS} jobs x {ROUNDS} rounds:")
    print(f"  raw median {statistics.median(raw):.2f} img/s, queue median {statistics.median(queued):.2f} img/s")
    print(f"  queue/raw = {ratio:.3f} (target >= {TARGET_RATIO}) {verdict}")
    return {"raw": statistics.median(raw), "queue": statistics.median(queued), "ratio": ratio}


def _rounds(settings: Settings) -> tuple[list[float], list[float]]:
    raw, queued = [], []
    for round_index in range(ROUNDS):
        raw.append(raw_images_per_s(settings))
        queued.append(asyncio.run(queue_rate(settings, jobs=JOBS, size_px=SIZE_PX, steps=STEPS)))
        print(f"  round {round_index + 1}: raw {raw[-1]:.2f} img/s, queue {queued[-1]:.2f} img/s", flush=True)
    return raw, queued


if __name__ == "__main__":
    sys.exit(0 if main()["ratio"] >= TARGET_RATIO else 1)
