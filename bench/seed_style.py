"""Item 2: the seed-style app (generation inside its async handler) vs the bridge + worker, under 16 callers.

Same model, 256x256, 20 steps, 2 torch threads, batch 1; a prober hits each design's health route meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bench._stack import PROMPT, bench_stack, prepare_bridge, wait_until_ready
from bench.bridge_load import _with_bridge
from bench.raw_vs_queue import JOBS as RAW_JOBS
from bench.raw_vs_queue import SIZE_PX, STEPS, raw_images_per_s
from sdqueue.config import Settings
from sdqueue.devstack.stack import start_worker, stop_process, worker_environment

CALLERS, JOBS, ROUNDS = 16, 32, 2
PROBE_INTERVAL_S = 0.2
TARGET_HEALTH_MAX_S = 1.0  # a Kubernetes liveness probe's default timeout
READY_TIMEOUT_S, REQUEST_TIMEOUT_S = 180.0, 600.0
SEED_ROUTE = "/generar-imagen-texto"
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"  # a throwaway account of the bench stack
REPO_ROOT = Path(__file__).resolve().parents[1]

Call = Callable[[int], Awaitable[tuple[float, float]]]  # seed -> (seconds to accept, seconds to the PNG)


@dataclass(frozen=True)
class Load:
    """One design's figures under the load: throughput, then per-job and per-probe seconds."""

    images_per_s: float
    latency_s: list[float]
    accept_s: list[float]
    health_s: list[float]


def main() -> dict[str, float]:
    """Alternate bare loop, seed-style and bridge + worker for ROUNDS rounds; print and return the figures."""
    with bench_stack(threads=2, prefetch=2) as base:
        settings = _with_bridge(base)
        seed_port = _free_port()
        with (settings.state_dir / "bench.log").open("wb") as log:
            prepare_bridge(settings, user=BENCH_USER, password=BENCH_PASSWORD, log=log)
            figures = _measure(settings, seed_port=seed_port, log=log)
    _report(figures)
    return figures


def _measure(settings: Settings, *, seed_port: int, log: IO[bytes]) -> dict[str, float]:
    """Alternate the three designs for ROUNDS rounds, with every server up; the pooled figures."""
    with _servers(settings, seed_port=seed_port, log=log):
        wait_until_ready(settings)
        bare, seed, queue = [], [], []
        for round_index in range(ROUNDS):
            bare.append(raw_images_per_s(settings, jobs=RAW_JOBS))
            seed.append(asyncio.run(_seed_load(f"http://127.0.0.1:{seed_port}")))
            queue.append(asyncio.run(_queue_load(f"http://127.0.0.1:{settings.bridge.port}")))
            print(
                f"  round {round_index + 1}: bare {bare[-1]:.2f} img/s, seed-style {seed[-1].images_per_s:.2f}"
                f" img/s, bridge + worker {queue[-1].images_per_s:.2f} img/s"
            )
    return _figures(statistics.median(bare), _pooled(seed), _pooled(queue))


@contextlib.contextmanager
def _servers(settings: Settings, *, seed_port: int, log: IO[bytes]) -> Iterator[None]:
    """Start the seed-style app, a worker and a bridge; each stays idle while another design is measured."""
    env = worker_environment(settings)
    seed_app = ["-m", "uvicorn", "bench.seed_app:app", "--host", "127.0.0.1", "--port", str(seed_port)]
    processes = [
        start_worker(settings, log=log),
        subprocess.Popen([sys.executable, "-m", "sdqueue", "bridge"], env=env, stdout=log, stderr=log),
        subprocess.Popen([sys.executable, *seed_app], env=env, cwd=REPO_ROOT, stdout=log, stderr=log),
    ]
    try:
        yield
    finally:
        for process in processes:
            stop_process(process, timeout_s=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=CALLERS + 4, max_keepalive_connections=CALLERS + 4)
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits)


async def _seed_load(url: str) -> Load:
    """The seed-style app: one POST answers the PNG, so accepting a job takes as long as generating it."""
    async with _client(url) as http:
        await _until_answering(http, "/health")
        return await _load(functools.partial(_seed_call, http), http=http, health_path="/health")


async def _seed_call(http: httpx.AsyncClient, seed: int) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"texto": PROMPT, "seed": seed, "size_px": SIZE_PX, "steps": STEPS}
    _check_png(await http.post(SEED_ROUTE, json=body))
    latency_s = time.perf_counter() - started
    return latency_s, latency_s


async def _queue_load(url: str) -> Load:
    """The bridge + worker: POST answers 202, `wait` blocks until the job is terminal, then the PNG is fetched."""
    async with _client(url) as http:
        await _until_answering(http, "/readyz")
        token = (await http.post("/token", data={"username": BENCH_USER, "password": BENCH_PASSWORD})).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        return await _load(functools.partial(_queue_call, http, headers=headers), http=http, health_path="/healthz")


async def _queue_call(http: httpx.AsyncClient, seed: int, *, headers: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"prompt": PROMPT, "width": SIZE_PX, "height": SIZE_PX, "steps": STEPS, "seed": seed}
    accepted = await http.post("/v1/txt2img", json=body, headers=headers)
    accept_s = time.perf_counter() - started
    if accepted.status_code != 202:
        raise SystemExit(f"the bridge refused a job: {accepted.status_code} {accepted.text}")
    job_id = accepted.json()["job_id"]
    status = await http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": REQUEST_TIMEOUT_S}, headers=headers)
    if status.json().get("status") != "succeeded":
        raise SystemExit(f"job {job_id} did not succeed: {status.text}")
    _check_png(await http.get(f"/v1/jobs/{job_id}/images/0", headers=headers, follow_redirects=True))
    return accept_s, time.perf_counter() - started


def _check_png(response: httpx.Response) -> None:
    if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
        raise SystemExit(f"expected a PNG, got {response.status_code} {response.headers.get('content-type')}")


async def _until_answering(http: httpx.AsyncClient, path: str) -> None:
    async with asyncio.timeout(READY_TIMEOUT_S):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(path)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


async def _load(call: Call, *, http: httpx.AsyncClient, health_path: str) -> Load:
    """JOBS calls from CALLERS concurrent callers while `health_path` is probed; one call first warms up."""
    await call(10_000)
    seeds = iter(range(JOBS))  # shared: each caller takes the next seed when it is free
    done = asyncio.Event()
    prober = asyncio.create_task(_probe(http, health_path, done=done))
    started = time.perf_counter()
    try:
        per_caller = await asyncio.gather(*(_caller(call, seeds) for _ in range(CALLERS)))
    finally:
        done.set()
        health_s = await prober
    elapsed_s = time.perf_counter() - started
    jobs = [job for caller in per_caller for job in caller]
    return Load(
        images_per_s=len(jobs) / elapsed_s,
        latency_s=[latency for _, latency in jobs],
        accept_s=[accept for accept, _ in jobs],
        health_s=health_s,
    )


async def _caller(call: Call, seeds: Iterator[int]) -> list[tuple[float, float]]:
    return [await call(seed) for seed in seeds]


async def _probe(http: httpx.AsyncClient, path: str, *, done: asyncio.Event) -> list[float]:
    """Seconds each health check took; a check starts PROBE_INTERVAL_S after the previous one answered."""
    latencies_s = []
    while not done.is_set():
        started = time.perf_counter()
        # No timeout: how long a check waits behind a blocked event loop is the figure.
        (await http.get(path, timeout=None)).raise_for_status()
        latencies_s.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_INTERVAL_S)
    return latencies_s


def _pooled(loads: list[Load]) -> Load:
    """Median throughput across rounds; every job's and every probe's seconds together."""
    return Load(
        images_per_s=statistics.median(load.images_per_s for load in loads),
        latency_s=[value for load in loads for value in load.latency_s],
        accept_s=[value for load in loads for value in load.accept_s],
        health_s=[value for load in loads for value in load.health_s],
    )


def _quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _figures(bare: float, seed: Load, queue: Load) -> dict[str, float]:
    figures = {"bare_img_s": bare, "queue_vs_seed": queue.images_per_s / seed.images_per_s}
    for name, load in (("seed", seed), ("queue", queue)):
        figures |= {
            f"{name}_img_s": load.images_per_s,
            f"{name}_vs_bare": load.images_per_s / bare,
            f"{name}_latency_p50_s": _quantile(load.latency_s, 0.50),
            f"{name}_latency_p95_s": _quantile(load.latency_s, 0.95),
            f"{name}_accept_p50_s": _quantile(load.accept_s, 0.50),
            f"{name}_accept_p95_s": _quantile(load.accept_s, 0.95),
            f"{name}_health_p95_s": _quantile(load.health_s, 0.95),
            f"{name}_health_max_s": max(load.health_s),
            f"{name}_health_checks": len(load.health_s),
            f"{name}_health_slow": sum(latency > TARGET_HEALTH_MAX_S for latency in load.health_s),
        }
    return figures


def _report(figures: dict[str, float]) -> None:
    print(
        f"seed-style vs bridge + worker: {CALLERS} callers, {JOBS} jobs x {ROUNDS} rounds, "
        f"{SIZE_PX}x{SIZE_PX}, {STEPS} steps, batch 1 (median img/s; seconds pooled over rounds)"
    )
    columns = ("img/s", "vs bare", "latency p50/p95 s", "accept p50/p95 s", "health p95/max s", "health > 1 s")
    widths = (7, 9, 19, 19, 19, 14)
    print(f"  {'':<16}" + "".join(f"{column:>{width}}" for column, width in zip(columns, widths, strict=True)))
    print(f"  {'bare loop':<16}{figures['bare_img_s']:>7.2f}{1:>9.3f}")
    for name, label in (("seed", "seed-style"), ("queue", "bridge + worker")):
        cells = (
            f"{figures[f'{name}_img_s']:.2f}",
            f"{figures[f'{name}_vs_bare']:.3f}",
            _pair(figures, f"{name}_latency_p50_s", f"{name}_latency_p95_s"),
            _pair(figures, f"{name}_accept_p50_s", f"{name}_accept_p95_s"),
            _pair(figures, f"{name}_health_p95_s", f"{name}_health_max_s"),
            f"{figures[f'{name}_health_slow']:.0f} of {figures[f'{name}_health_checks']:.0f}",
        )
        print(f"  {label:<16}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True)))
    verdict = "ok" if is_health_ok(figures) else "MISSED"
    print(f"  bridge/seed-style throughput = {figures['queue_vs_seed']:.3f}")
    print(
        f"  bridge health-check max {figures['queue_health_max_s']:.3f} s (target < {TARGET_HEALTH_MAX_S} s) {verdict}"
    )


def _pair(figures: dict[str, float], first: str, second: str) -> str:
    return " / ".join(f"{figures[key]:.3f}" if figures[key] < 10 else f"{figures[key]:.1f}" for key in (first, second))


def is_health_ok(figures: dict[str, float]) -> bool:
    """The worker design's point: the bridge's health check answers within a probe's timeout while jobs run."""
    return figures["queue_health_max_s"] < TARGET_HEALTH_MAX_S


if __name__ == "__main__":
    sys.exit(0 if is_health_ok(main()) else 1)
