"""Item 5: Stable Diffusion 1.5 (or SDXL) on a CUDA device, with random weights of the real architecture (real costs).

First images/s by batch size for each configuration (fp32 eager as the original API ran, fp16 and bf16 with SDPA,
fp16 with channels-last and fused QKV, and that with the UNet compiled). `fp16-compiled-lora-swap` is no sweep: it
compiles the UNet with its LoRA hotswap slot and times calls that switch between 4 LoRAs against calls that keep one,
counting recompiles (there must be none). Then the worker's own path at the best
configuration, side by side with the bare pipeline call: validated request bodies → micro-batching → generation →
encoding, everything but the broker and the bucket (that host has neither; `bench.overhead` measures their cost).
Every result is written to the JSON file as soon as it exists, so a run cut short keeps what it measured.

    python -m bench.gpu --out gpu.json                     # on the GPU host
    python -m bench.gpu --family sdxl --size 1024 --steps 20 --batches 1,2,4,8 \
        --configs fp16-sdpa,fp16-compiled --out gpu-sdxl.json
    python -m bench.gpu_plot gpu.json docs/img/gpu-images-per-s.png
    python -m bench.gpu --configs fp16-compiled-lora-swap --out gpu-lora-swap.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from torch._dynamo.utils import counters

from bench._anchors import BOUND_IMAGES_PER_S
from bench._path import bare_rate, worker_path_rate
from bench._stack import txt2img_spec
from bench.adapters import call_s, lora_files
from sdqueue.config import RuntimeSettings
from sdqueue.worker.generate import ImageGenerator, build_tiny_model, load_generator
from sdqueue.worker.generate.sd15 import build_sd15_random
from sdqueue.worker.generate.sdxl import build_sdxl_random

LORA_SWAP_CONFIG = "fp16-compiled-lora-swap"
CONFIGS: dict[str, dict[str, Any]] = {
    "fp32-eager": {"dtype": "float32"},
    "fp16-sdpa": {"dtype": "float16"},
    "bf16-sdpa": {"dtype": "bfloat16"},
    "fp16-tuned": {"dtype": "float16", "channels_last": True, "fuse_qkv": True},
    "fp16-compiled": {"dtype": "float16", "channels_last": True, "fuse_qkv": True, "compile_mode": "reduce-overhead"},
    # Which of channels-last and fused QKV the compiled UNet still needs, and what max-autotune adds on top.
    "fp16-compiled-plain": {"dtype": "float16", "compile_mode": "reduce-overhead"},
    "fp16-autotune": {"dtype": "float16", "channels_last": True, "fuse_qkv": True, "compile_mode": "max-autotune"},
    # LoRAs swapped into the compiled UNet's slot (no fused QKV: its fused projection would bypass the LoRA layers).
    LORA_SWAP_CONFIG: {"dtype": "float16", "compile_mode": "default", "lora_hotswap_rank": 64},
}
LORA_SWAP_LORAS, LORA_SWAP_PAIRS, LORA_SWAP_STEPS = 4, 16, 2


@dataclass
class Results:
    """Everything measured so far; saved whole after each addition."""

    path: Path
    machine: dict[str, Any]
    parameters: dict[str, Any]
    load_s: dict[str, float] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    worker_path: list[dict[str, Any]] = field(default_factory=list)
    lora_swap: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def save(self) -> None:
        fields = {name: value for name, value in asdict(self).items() if name != "path"}
        self.path.write_text(json.dumps(fields, indent=2) + "\n")


def machine_facts(device: str) -> dict[str, Any]:
    """Which machine and library versions produced the figures."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.startswith("cuda"):
        facts |= {
            "gpu": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "flash_sdp": torch.backends.cuda.flash_sdp_enabled(),  # type: ignore[no-untyped-call]  # torch
        }
    return facts


def time_calls(generator: ImageGenerator, *, batch: int, size_px: int, steps: int, min_s: float) -> dict[str, Any]:
    """Median seconds of one `batch`-image pipeline call, repeated until `min_s` has passed (at most 5 calls).

    Peak GPU memory is this model's alone: its weights plus what a call adds, whatever else is loaded.
    """
    spec = txt2img_spec(seeds=tuple(range(batch)), size_px=size_px, steps=steps)
    seconds: list[float] = []
    peak_extra = 0
    while not seconds or (sum(seconds) < min_s and len(seconds) < 5):
        before = _reset_peak()
        started = time.perf_counter()
        generator.generate(spec)
        seconds.append(time.perf_counter() - started)
        peak_extra = max(peak_extra, _peak() - before)
    median_s = statistics.median(seconds)
    return {
        "batch": batch,
        "calls": len(seconds),
        "seconds": round(median_s, 4),
        "images_per_s": round(batch / median_s, 3),
        "steps_per_s": round(steps / median_s, 2),
        "fraction_of_bound": round(batch / median_s / BOUND_IMAGES_PER_S, 3),
        "peak_gpu_gib": round((generator.memory_bytes + peak_extra) / 2**30, 2) if torch.cuda.is_available() else 0,
    }


def _reset_peak() -> int:
    """Start a new peak and return the bytes allocated now (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def sweep(generator: ImageGenerator, name: str, *, args: argparse.Namespace, results: Results) -> float:
    """Measure every batch size for one configuration; return its best images/s."""
    best = 0.0
    for batch in args.batches:
        started = time.perf_counter()
        # The first call at a batch size pays lazy initialisation (and, compiled, the compile): not timed.
        generator.generate(txt2img_spec(seeds=tuple(range(batch)), size_px=args.size, steps=2))
        warmup_s = time.perf_counter() - started
        timed = time_calls(generator, batch=batch, size_px=args.size, steps=args.steps, min_s=args.min_s)
        row = {"config": name, "warmup_s": round(warmup_s, 2)} | timed
        print(f"  {name} batch {batch}: {row['images_per_s']} img/s, {row['steps_per_s']} steps/s", flush=True)
        results.sweep.append(row)
        results.save()
        best = max(best, float(timed["images_per_s"]))
    return best


def measure_worker_path(generator: ImageGenerator, name: str, *, args: argparse.Namespace, results: Results) -> None:
    """The worker's path against the bare call, alternated over rounds so drift hits both."""
    batch = max(args.batches)
    # Warm the encoder and the threads first.
    asyncio.run(worker_path_rate(generator, jobs=batch, batch=batch, size_px=args.size, steps=args.steps))
    path_rates, raw_rates = [], []
    for _ in range(args.rounds):
        raw_rates.append(bare_rate(generator, jobs=args.jobs, batch=batch, size_px=args.size, steps=args.steps))
        rate = worker_path_rate(generator, jobs=args.jobs, batch=batch, size_px=args.size, steps=args.steps)
        path_rates.append(asyncio.run(rate))
    path, raw = statistics.median(path_rates), statistics.median(raw_rates)
    row = {
        "config": name,
        "batch": batch,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "path_images_per_s": round(path, 3),
        "raw_images_per_s": round(raw, 3),
        "path_over_raw": round(path / raw, 3),
        "path_rates": [round(rate, 3) for rate in path_rates],
        "raw_rates": [round(rate, 3) for rate in raw_rates],
    }
    print(f"  worker path {name} batch {batch}: {path:.2f} img/s vs bare {raw:.2f} ({path / raw:.3f})", flush=True)
    results.worker_path.append(row)
    results.save()


def measure_lora_swap(source: Path, *, args: argparse.Namespace, results: Results) -> None:
    """The compiled UNet switching between LoRAs: each switching call is timed right after a call that keeps the
    LoRA (short calls, so the switch is not lost in the denoising), and the UNet's compiled graphs are counted."""
    runtime = RuntimeSettings(device=args.device, warmup_steps=0, **CONFIGS[LORA_SWAP_CONFIG])
    generator = load_generator(str(source), runtime=runtime)
    with tempfile.TemporaryDirectory(prefix="sdqueue-bench-lora-swap-") as scratch:
        files = lora_files(source, Path(scratch), count=LORA_SWAP_LORAS)
    spec = txt2img_spec(seeds=(0,), size_px=args.size, steps=LORA_SWAP_STEPS)
    started = time.perf_counter()
    generator.generate(dataclasses.replace(spec, adapters=(files[0],)))  # the compile
    warmup_s = time.perf_counter() - started
    graphs_before = counters["stats"]["unique_graphs"]
    same, switching = [], []
    for pair in range(LORA_SWAP_PAIRS):
        same.append(call_s(generator, dataclasses.replace(spec, adapters=(files[pair % LORA_SWAP_LORAS],))))
        switching.append(call_s(generator, dataclasses.replace(spec, adapters=(files[(pair + 1) % LORA_SWAP_LORAS],))))
    same_s, switch_s = statistics.median(same), statistics.median(switching)
    row = {
        "config": LORA_SWAP_CONFIG,
        "loras": LORA_SWAP_LORAS,
        "steps": LORA_SWAP_STEPS,
        "warmup_s": round(warmup_s, 2),
        "same_lora_s": round(same_s, 4),
        "switching_s": round(switch_s, 4),
        "switch_cost_ms": round((switch_s - same_s) * 1000, 2),
        "recompiles": counters["stats"]["unique_graphs"] - graphs_before,
    }
    print(f"  {LORA_SWAP_CONFIG}: same LoRA {same_s:.4f}s, switching {switch_s:.4f}s, {row['recompiles']} recompiles")
    results.lora_swap.append(row)
    results.save()
    generator.release()


def model_dir(args: argparse.Namespace) -> Path:
    """The model to measure: SD 1.5 or SDXL with random weights (or a tiny one for a CPU smoke run), built once."""
    path: Path = args.model_dir or Path(tempfile.gettempdir()) / f"sdqueue-{args.family}-random"
    if (path / "model_index.json").exists():
        return path
    started = time.perf_counter()
    if args.tiny:
        built = build_tiny_model(path, family="sdxl" if args.family == "sdxl" else "sd1")
    else:
        built = build_sdxl_random(path) if args.family == "sdxl" else build_sd15_random(path)
    kind = f"{'tiny ' if args.tiny else ''}{args.family}"
    print(f"built {kind} model in {time.perf_counter() - started:.1f}s", flush=True)
    return built


def run_config(name: str, *, source: Path, args: argparse.Namespace, results: Results) -> tuple[float, ImageGenerator]:
    """Load one configuration and sweep its batch sizes; return its best images/s and the loaded generator."""
    runtime = RuntimeSettings(device=args.device, warmup_steps=0, **CONFIGS[name])
    started = time.perf_counter()
    generator = load_generator(str(source), runtime=runtime)
    results.load_s[name] = round(time.perf_counter() - started, 2)
    return sweep(generator, name, args=args, results=results), generator


def record_failure(name: str, exc: Exception, *, results: Results) -> None:
    """Keep a failed configuration's error and traceback in the results, and say so."""
    results.errors.append({"config": name, "error": repr(exc), "traceback": traceback.format_exc()})
    results.save()
    print(f"  {name} failed: {exc!r}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Sweep the configurations in order; the worker path runs after the eager ones and again if compiled wins."""
    args = parse_args(argv)
    source = model_dir(args)
    paths = {"out": str(args.out), "model_dir": str(source)}
    results = Results(args.out, machine=machine_facts(args.device), parameters=vars(args) | paths)
    best: tuple[float, str, ImageGenerator] | None = None
    for name in args.configs:
        if name == LORA_SWAP_CONFIG:
            try:
                measure_lora_swap(source, args=args, results=results)
            except Exception as exc:  # recorded, as a failing configuration is
                record_failure(name, exc, results=results)
            continue
        if "compile_mode" in CONFIGS[name] and best is not None:
            # Before a compile, which can outlast the run: the best eager configuration's path is then on record.
            measure_worker_path(best[2], best[1], args=args, results=results)
        try:
            rate, generator = run_config(name, source=source, args=args, results=results)
        except Exception as exc:  # a configuration that fails is recorded; the others still run
            record_failure(name, exc, results=results)
            continue
        if best is None or rate > best[0]:
            if best is not None:
                best[2].release()
            best = (rate, name, generator)
        else:
            generator.release()
    if best is not None and not any(row["config"] == best[1] for row in results.worker_path):
        measure_worker_path(best[2], best[1], args=args, results=results)
    print(f"results in {args.out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are the GPU run recorded in docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="architecture (default: sd15)")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: sdqueue-<family>-random in temp")
    parser.add_argument("--tiny", action="store_true", help="the family's tiny model (a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", type=lambda text: text.split(","), default=list(CONFIGS))
    parser.add_argument("--batches", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 8, 16])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--min-s", type=float, default=3.0, help="time each batch size for at least this long")
    parser.add_argument("--jobs", type=int, default=48, help="jobs per worker-path round")
    parser.add_argument("--rounds", type=int, default=2, help="worker-path rounds (alternated with the bare call)")
    args = parser.parse_args(argv)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    return args


if __name__ == "__main__":
    main()
