"""Live previews: the same jobs with previews on (at the worker's default interval) and off, in the same run.

Tiny model, 128x128, 20 steps, 2 torch threads, jobs of 1 and 4 images. Each preview is decoded from the latents
and encoded to WebP on the generation thread, as the worker does. Previews at every step (an interval the worker
refuses) are timed too, to show what one decode costs. The variants alternate job by job, and each job counts with
its fastest of ROUNDS runs: other load on a shared host only ever adds time. Target: on <= 1.05x off.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from bench._stack import txt2img_spec
from sdqueue.config import LimitSettings, RuntimeSettings
from sdqueue.worker.encode import encode_preview
from sdqueue.worker.generate import GenerationSpec, ImageGenerator, StepPreview, ensure_tiny_model, load_generator

SIZE_PX, STEPS, JOBS, ROUNDS = 128, 20, 4, 5
BATCHES = (1, 4)
TARGET_RATIO = 1.05
EVERY_STEP_S = 1e-9


@dataclasses.dataclass
class Timing:
    """Seconds and previews of one variant, summed over the jobs."""

    seconds: float = 0.0
    previews: int = 0


def time_job(generator: ImageGenerator, spec: GenerationSpec) -> tuple[float, int]:
    """Seconds of one job, encoding each preview as the worker does, and its preview count."""
    previews = []

    def on_preview(_index: int, preview: StepPreview) -> None:
        previews.append(encode_preview(preview.image))

    started = time.perf_counter()
    generator.generate(spec, on_preview=on_preview)
    return time.perf_counter() - started, len(previews)


def _spec(*, seeds: tuple[int, ...], interval_s: float | None) -> GenerationSpec:
    spec = txt2img_spec(seeds=seeds, size_px=SIZE_PX, steps=STEPS)
    return dataclasses.replace(spec, scheduler="euler", preview_interval_s=interval_s)


def measure(generator: ImageGenerator, *, batch: int) -> dict[str, Timing]:
    """Per variant: the sum over jobs of each job's fastest run, and the previews of those runs."""
    variants = {"off": None, "on": LimitSettings().min_preview_interval_s, "every step": EVERY_STEP_S}
    best: dict[tuple[str, int], tuple[float, int]] = {}
    names = list(variants)
    for round_index in range(ROUNDS):
        for job in range(JOBS):
            seeds = tuple(range(job * batch, (job + 1) * batch))
            # Each variant takes each place in the order in turn, so none always runs first (after a pause).
            shift = (round_index + job) % len(names)
            for name in names[shift:] + names[:shift]:
                interval_s = variants[name]
                run = time_job(generator, _spec(seeds=seeds, interval_s=interval_s))
                best[name, job] = min(best.get((name, job), run), run)
    return {
        name: Timing(
            seconds=sum(best[name, job][0] for job in range(JOBS)),
            previews=sum(best[name, job][1] for job in range(JOBS)),
        )
        for name in variants
    }


def main() -> float:
    """Print each batch size's timings and ratios; return the worst previews-on / off ratio."""
    runtime = RuntimeSettings(device="cpu", threads=2)
    with tempfile.TemporaryDirectory(prefix="sdqueue-bench-") as scratch:
        model_dir = ensure_tiny_model(Path(scratch) / "tiny")
        generator = load_generator(str(model_dir), runtime=runtime)
        generator.generate(_spec(seeds=(10_000,), interval_s=EVERY_STEP_S), on_preview=lambda _i, _p: None)
        ratios = []
        print(f"previews, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {JOBS} jobs, fastest of {ROUNDS} runs each:")
        for batch in BATCHES:
            figures = measure(generator, batch=batch)
            off, on, every = figures["off"], figures["on"], figures["every step"]
            ratios.append(on.seconds / off.seconds)
            per_decode_ms = (every.seconds - off.seconds) / max(every.previews, 1) * 1000
            print(
                f"  batch {batch}: off {off.seconds:.2f} s; on {on.seconds:.2f} s with {on.previews} previews: "
                f"**{on.seconds / off.seconds:.3f}x**; every step {every.seconds:.2f} s with {every.previews}: "
                f"{every.seconds / off.seconds:.3f}x ({per_decode_ms:.2f} ms a preview)"
            )
    worst = max(ratios)
    print(f"  worst on/off {worst:.3f} (target <= {TARGET_RATIO})")
    return worst


if __name__ == "__main__":
    sys.exit(0 if main() <= TARGET_RATIO else 1)
