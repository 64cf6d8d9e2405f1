"""Adapters: 64 jobs spread over 4 LoRAs against the same 64 jobs without adapters, in one run; and what switching
the active LoRA costs a call.

Tiny model, 128x128, 10 steps, 2 torch threads, batches of up to 8 images. The jobs arrive at once, adapters
interleaved (job i uses LoRA i mod 4), and are grouped as the worker's batcher groups them (`batch_key`: one
adapter set per batch). The variants alternate
batch by batch and each batch counts with its fastest of ROUNDS runs. The switch cost is the
difference between calls that alternate two loaded LoRAs and calls that keep one (lower quartiles), at batch 1;
the first use of a LoRA (parse and load) is timed apart; both on 1-step 64x64 calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._stack import txt2img_spec
from sdqueue.config import RuntimeSettings
from sdqueue.worker.generate import (
    AdapterFile,
    BatchKey,
    GenerationSpec,
    ImageGenerator,
    batch_key,
    ensure_tiny_model,
    load_generator,
)
from sdqueue.worker.generate.tiny_adapters import build_tiny_lora

SIZE_PX, STEPS, JOBS, ADAPTERS, BATCH, ROUNDS, SWITCHES = 128, 10, 64, 4, 8, 3, 64
TARGET_RATIO = 0.8  # adapters' images/s over plain images/s


def lora_files(model: Path, folder: Path, *, count: int) -> list[AdapterFile]:
    """Random LoRAs for the tiny model, as the worker hands them to the generator."""
    files = []
    for seed in range(count):
        data = build_tiny_lora(model, folder / f"lora-{seed}.safetensors", seed=seed).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        files.append(AdapterFile(sha256=sha256, kind="lora", scale=0.8, token=None, data=data))
    return files


def group_batches(specs: list[GenerationSpec]) -> list[list[GenerationSpec]]:
    """The batches the worker's batcher forms from specs arriving at once: one adapter set each, BATCH at most."""
    groups: dict[BatchKey, list[GenerationSpec]] = {}
    for spec in specs:
        groups.setdefault(batch_key(spec), []).append(spec)
    return [group[start : start + BATCH] for group in groups.values() for start in range(0, len(group), BATCH)]


def batch_s(generator: ImageGenerator, batch: list[GenerationSpec]) -> float:
    """Seconds of one batched generation call."""
    started = time.perf_counter()
    generator.generate_batch(batch)
    return time.perf_counter() - started


def rates(generator: ImageGenerator, plain: list[GenerationSpec], styled: list[GenerationSpec]) -> tuple[float, float]:
    """Images/s of both job sets; batches alternate between the variants (each styled batch switches LoRA), and
    each batch counts with its fastest of ROUNDS runs, since other load on a shared host only ever adds time."""
    plain_batches, styled_batches = group_batches(plain), group_batches(styled)
    # Each LoRA batch follows a plain one, so each switches: its LoRA is activated again (loaded, never reloaded).
    fastest_plain = [float("inf")] * len(plain_batches)
    fastest_styled = [float("inf")] * len(styled_batches)
    for _ in range(ROUNDS):
        for index, (one, other) in enumerate(zip(plain_batches, styled_batches, strict=True)):
            fastest_plain[index] = min(fastest_plain[index], batch_s(generator, one))
            fastest_styled[index] = min(fastest_styled[index], batch_s(generator, other))
    return len(plain) / sum(fastest_plain), len(styled) / sum(fastest_styled)


def call_s(generator: ImageGenerator, spec: GenerationSpec) -> float:
    """Seconds of one generation call."""
    started = time.perf_counter()
    generator.generate(spec)
    return time.perf_counter() - started


def switch_costs(generator: ImageGenerator, files: list[AdapterFile], *, fresh: AdapterFile) -> tuple[float, float]:
    """(seconds the first use of `fresh` adds, seconds a switch between two loaded LoRAs adds), on short calls
    (64x64, 1 step, batch 1) so that the switch is not lost in the noise of the denoising."""
    spec = txt2img_spec(seeds=(1,), size_px=64, steps=1)
    plain_s = min(call_s(generator, spec) for _ in range(3))
    first_use_s = call_s(generator, dataclasses.replace(spec, adapters=(fresh,))) - plain_s
    same = [call_s(generator, dataclasses.replace(spec, adapters=(files[0],))) for _ in range(SWITCHES)]
    alternating = [call_s(generator, dataclasses.replace(spec, adapters=(files[i % 2],))) for i in range(SWITCHES)]
    # Other load on a shared host only ever adds time: each side counts with its fastest calls (the lower quartile).
    return first_use_s, _low(alternating) - _low(same)


def _low(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=4)[0]


def main() -> float:
    """Print images/s with and without adapters side by side, their ratio, and the switch costs."""
    with tempfile.TemporaryDirectory(prefix="sdqueue-bench-adapters-") as scratch:
        model = ensure_tiny_model(Path(scratch) / "tiny")
        runtime = RuntimeSettings(device="cpu", threads=2, warmup_steps=0)
        generator = load_generator(str(model), runtime=runtime)
        *files, fresh = lora_files(model, Path(scratch), count=ADAPTERS + 1)
        plain = [txt2img_spec(seeds=(seed,), size_px=SIZE_PX, steps=STEPS) for seed in range(JOBS)]
        styled = [dataclasses.replace(spec, adapters=(files[i % ADAPTERS],)) for i, spec in enumerate(plain)]
        for batch in group_batches(styled)[:ADAPTERS] + group_batches(plain)[:1]:
            generator.generate_batch(batch)  # loads each LoRA once: first use is timed apart
        plain_rate, styled_rate = rates(generator, plain, styled)
        first_use_s, switch_s = switch_costs(generator, files, fresh=fresh)
    ratio = styled_rate / plain_rate
    print(
        f"adapters, {SIZE_PX}x{SIZE_PX}, {STEPS} steps, {JOBS} jobs, batches of {BATCH}, each its fastest of {ROUNDS}:"
    )
    print(f"  no adapters {plain_rate:.2f} img/s, over {ADAPTERS} LoRAs {styled_rate:.2f} img/s: {ratio:.3f}x")
    print(f"  first use of a LoRA +{first_use_s * 1000:.0f} ms, a switch between two loaded +{switch_s * 1000:.1f} ms")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= TARGET_RATIO else 1)
