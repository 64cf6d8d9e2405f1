"""The tiny SDXL model: the bare diffusers loop against sdqueue end to end (publish → event → image in the bucket).

As bench.raw_vs_queue, on the SDXL shape (two text encoders, the text-time embedding): 256x256, 20 steps, batch 1,
2 torch threads, rounds alternated so that machine noise hits both; the ratio of medians is the queue's overhead.
The queued requests leave guidance out, so the worker fills SDXL's 5.0; the bare loop runs 7.5, which costs the
same (any guidance above 1 runs the UNet on prompt and negative side by side). Target: queue/raw >= 0.95.

    python -m bench.sdxl
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench._stack import bench_stack
from bench.raw_vs_queue import TARGET_RATIO, measure, report
from sdqueue.worker.generate import build_tiny_model

JOBS, ROUNDS = 24, 5


def main() -> dict[str, float]:
    """Build the tiny SDXL model, run the rounds on it and print each figure and the ratio of medians."""
    with bench_stack(threads=2, prefetch=2) as stack:
        model = build_tiny_model(Path(stack.state_dir) / "models" / "tiny-sdxl", family="sdxl")
        settings = stack.model_copy(update={"model": str(model)})
        raw, queued = measure(settings, jobs=JOBS, rounds=ROUNDS, family="sdxl")
    return report(f"tiny SDXL raw vs queue, {JOBS} jobs a round", raw, queued)


if __name__ == "__main__":
    sys.exit(0 if main()["ratio"] >= TARGET_RATIO else 1)
