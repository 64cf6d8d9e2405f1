"""Item 4: worker cold start to ready, and peak RSS per batch size (CPU; GPU memory is measured on a GPU host).

Cold start is timed from spawning `python -m sdqueue worker` to its consumer appearing on the queue, with the
tiny model already built. Peak RSS is read in a fresh process per batch size (128x128, 20 steps).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._stack import bench_stack
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.devstack.stack import start_worker, stop_process, worker_environment

STARTS = 3
BATCH_SIZES = (1, 2, 4, 8)
PEAK_RSS_PROBE = """
import json, sys
from sdqueue.config import RuntimeSettings
from sdqueue.worker.generate import GenerationSpec, load_generator
source, batch = sys.argv[1], int(sys.argv[2])
def peak_kib():
    # VmHWM restarts at exec; ru_maxrss would still count the parent's peak from before the fork.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
before = peak_kib()
generator = load_generator(source, runtime=RuntimeSettings(device="cpu", threads=2))
loaded = peak_kib()
spec = GenerationSpec(mode="txt2img", prompt="a cat", negative_prompt="", width=128, height=128, steps=20,
                      guidance_scale=7.5, seeds=tuple(range(batch)), scheduler=None, strength=0.75, init_image=None)
generator.generate(spec)
peak = peak_kib()
print(json.dumps({"imports_kib": before, "loaded_kib": loaded, "peak_kib": peak}))
"""


async def _seconds_to_ready(settings: Settings, log_path: Path) -> float:
    async with SdqueueClient(settings, subject="bench") as client:
        with log_path.open("ab") as log:
            started = time.perf_counter()
            worker = start_worker(settings, log=log)
            try:
                await client.wait_for_workers("default", timeout_s=120)
                return time.perf_counter() - started
            finally:
                await asyncio.to_thread(stop_process, worker)


def peak_rss_mib(settings: Settings, batch: int) -> dict[str, float]:
    """Peak RSS of a fresh process that loads the model and generates one batch."""
    command = [sys.executable, "-c", PEAK_RSS_PROBE, settings.model_sources()["default"], str(batch)]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env=worker_environment(settings), timeout=300
    )
    figures = json.loads(output.stdout.strip().splitlines()[-1])
    return {name.removesuffix("_kib"): value / 1024 for name, value in figures.items()}


def main() -> None:
    """Print cold-start times and the peak RSS table."""
    with bench_stack() as settings:
        log_path = Path(settings.state_dir) / "workers.log"
        starts = [asyncio.run(_seconds_to_ready(settings, log_path)) for _ in range(STARTS)]
        rss = {batch: peak_rss_mib(settings, batch) for batch in BATCH_SIZES}
    print(f"worker cold start to ready (tiny model, CPU), {STARTS} starts:")
    print(f"  median {statistics.median(starts):.2f}s (min {min(starts):.2f}s, max {max(starts):.2f}s)")
    print("peak RSS per batch size, 128x128, 20 steps (fresh process each):")
    base = rss[1]["peak"]
    for batch, figures in rss.items():
        print(
            f"  batch {batch}: after imports {figures['imports']:.0f} MiB, model loaded {figures['loaded']:.0f} MiB, "
            f"peak {figures['peak']:.0f} MiB ({figures['peak'] / base:.2f}x batch 1)"
        )


if __name__ == "__main__":
    main()
