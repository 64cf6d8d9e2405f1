"""The bridge under bursts: 200 concurrent txt2img accepts per round against one bridge and one busy worker.

Targets: no 5xx, every job completes, and `/healthz` answers within 1 s throughout. The p99 of an accept is
reported, not targeted: on two shared cores the bridge, the broker, the worker and this load client set it
together, and a deployment gives the bridge cores (or replicas) of its own (docs/operations.md).

Run with `python -m bench.bridge_load [--baseline DIR]`. The bridge runs as a deployment runs it: `sdqueue bridge`
with uvicorn's own workers (`bridge.processes` 1, then 2) on its default database. With `--baseline`, a checkout
of other code (for example `git worktree add /tmp/old <commit>`) serves the same rounds in the same run, each
configuration in turn against the one worker of this code: side-by-side figures.

Each round's 200 requests go out at once on 200 open keep-alive connections, written by a minimal HTTP/1.1 client
on raw asyncio streams (httpx spends about a millisecond of CPU per request, which would be counted as the
bridge's). A round starts once the worker has begun a slow job (256x256, 60 steps), so it arrives while the
worker generates. A poller times `GET /healthz` every 0.1 s on its own connection throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from pydantic import SecretStr

from bench._stack import bench_stack, prepare_bridge, sdqueue_cli
from sdqueue.config import BridgeSettings, Settings
from sdqueue.devstack.stack import start_worker, stop_process, worker_environment

REQUESTS = 200
ROUNDS = 4
CONNECTIONS_SETTLE_S = 0.2
HEALTH_PERIOD_S = 0.1
HEALTH_TARGET_S = 1.0
BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
READY_TIMEOUT_S = 180.0
WAITS_AT_ONCE = BridgeSettings().max_streams_per_user
USER, PASSWORD = "bench", "bench-password"

Accept = tuple[str | None, float, int]  # job id (None unless 202), seconds to the answer, HTTP status


@dataclass(frozen=True)
class Bridge:
    """One configuration to measure: whose code, and how many processes."""

    label: str
    processes: int
    source: Path | None = None  # a checkout's root; None: this code


def main(*, baseline: Path | None = None, processes: tuple[int, ...] = (1, 2)) -> list[dict[str, float | str]]:
    """Measure each configuration in turn against one worker; print the table and return its rows."""
    bridges = [Bridge(f"this code, {count} process(es)", count) for count in processes]
    if baseline is not None:
        bridges += [Bridge(f"baseline, {count} process(es)", count, baseline) for count in processes]
    rows: list[dict[str, float | str]] = []
    with bench_stack(threads=1, prefetch=1) as base, (base.state_dir / "bench.log").open("wb") as log:
        worker = start_worker(base, log=log)
        try:
            for bridge in bridges:
                settings = _with_bridge(base, processes=bridge.processes)
                with _serving(bridge, settings, log=log):
                    figures = asyncio.run(_load(f"http://127.0.0.1:{settings.bridge.port}"))
                rows.append({"bridge": bridge.label, **figures})
                _report(rows[-1])
        finally:
            stop_process(worker, timeout_s=60)
    return rows


def _with_bridge(settings: Settings, *, processes: int = 1) -> Settings:
    """Settings with a bridge on a free port, with a database of its own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bridge = BridgeSettings(
        port=port,
        token_secret=SecretStr(secrets.token_urlsafe(40)),
        database_url=SecretStr(f"sqlite+aiosqlite:///{settings.state_dir}/bridge-{port}.db"),
        max_wait_s=600,
        processes=processes,
    )
    return settings.model_copy(update={"bridge": bridge})


@contextmanager
def _serving(bridge: Bridge, settings: Settings, *, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Prepare the bridge's users, run `sdqueue bridge`, stop it on exit."""
    environment = _environment(bridge, settings)
    if bridge.source is None:
        prepare_bridge(settings, user=USER, password=PASSWORD, log=log)
    else:  # the first round's code kept its users in a file, and had no database to upgrade
        sdqueue_cli(["users", "add", USER, "--password-stdin"], environment=environment, log=log, stdin=PASSWORD)
    process = subprocess.Popen([sys.executable, "-m", "sdqueue", "bridge"], env=environment, stdout=log, stderr=log)
    try:
        yield process
    finally:
        stop_process(process, timeout_s=30)


def _environment(bridge: Bridge, settings: Settings) -> dict[str, str]:
    environment = worker_environment(settings)
    if bridge.source is None:
        return environment
    roots = [str(bridge.source / part) for part in ("contracts", "daemon", "clients")]
    environment["PYTHONPATH"] = os.pathsep.join(roots)  # ahead of this checkout's editable install
    known = _known_variables(environment)  # the checkout's settings refuse variables they do not define
    environment = {key: value for key, value in environment.items() if not key.startswith("SDQUEUE_") or key in known}
    environment["SDQUEUE_BRIDGE__USERS_FILE"] = str(settings.state_dir / f"users-{settings.bridge.port}.json")
    return environment


def _known_variables(environment: dict[str, str]) -> set[str]:
    """Every `SDQUEUE_*` variable the settings of the checkout on `PYTHONPATH` define."""
    script = (
        "from sdqueue.config import Settings\n"
        "for name, field in Settings.model_fields.items():\n"
        "    groups = getattr(field.annotation, 'model_fields', None)\n"
        "    for sub in groups or [None]:\n"
        "        print(f'SDQUEUE_{name}__{sub}'.upper() if sub else f'SDQUEUE_{name}'.upper())\n"
    )
    clean = {key: value for key, value in environment.items() if not key.startswith("SDQUEUE_")}
    listed = subprocess.run(
        [sys.executable, "-c", script], env=clean, capture_output=True, text=True, check=True
    ).stdout
    return set(listed.split())


async def _load(url: str) -> dict[str, float]:
    limits = httpx.Limits(max_connections=REQUESTS + 10, max_keepalive_connections=REQUESTS + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await _wait_ready(http)
        token = (await http.post("/token", data={"username": USER, "password": PASSWORD})).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        health: list[float] = []
        poller = asyncio.create_task(_poll_health(url, health))
        started = time.perf_counter()
        rounds = []
        try:
            for _ in range(ROUNDS):
                await _start_slow_job(http, headers)  # queued behind earlier rounds' jobs: returns once they are done
                rounds.append(await _accept_all(url, headers))
            accepted = [accept for round_ in rounds for accept in round_]
            waits = asyncio.Semaphore(WAITS_AT_ONCE)  # a user may hold only a few waits open at once
            finished = await asyncio.gather(
                *(_finish(http, headers, job_id, waits=waits) for job_id, _, _ in accepted if job_id)
            )
        finally:
            poller.cancel()
        elapsed = time.perf_counter() - started
    return _figures(rounds, accepted=accepted, finished=finished, health=health, elapsed_s=elapsed)


def _figures(
    rounds: list[list[Accept]], *, accepted: list[Accept], finished: list[int], health: list[float], elapsed_s: float
) -> dict[str, float]:
    p99s = [_p99(round_) for round_ in rounds]
    return {
        "requests": len(accepted),
        "server_errors": sum(status >= 500 for _, _, status in accepted) + sum(status >= 500 for status in finished),
        "completed": sum(status == 200 for status in finished),
        "p50_ms": statistics.median(latency for _, latency, _ in accepted) * 1000,
        "p99_ms": statistics.median(p99s) * 1000,
        "worst_round_p99_ms": max(p99s) * 1000,
        "health_max_ms": max(health, default=float("nan")) * 1000,
        "health_probes": len(health),
        "total_s": elapsed_s,
    }


async def _poll_health(url: str, seconds: list[float]) -> None:
    """Time `GET /healthz` every HEALTH_PERIOD_S on a connection of its own, until cancelled."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while True:
            started = time.perf_counter()
            response = await http.get("/healthz")
            seconds.append(time.perf_counter() - started if response.status_code == 200 else float("inf"))
            await asyncio.sleep(HEALTH_PERIOD_S)


def _p99(accepts: list[Accept]) -> float:
    latencies = sorted(latency for _, latency, _ in accepts)
    return latencies[int(len(latencies) * 0.99) - 1]


async def _wait_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the bridge never became ready")


async def _start_slow_job(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Queue a slow job and return once the worker starts it, so that the next round arrives while it generates."""
    slow = {**BODY, "width": 256, "height": 256, "steps": 60}
    deadline = time.monotonic() + READY_TIMEOUT_S
    response = await http.post("/v1/txt2img", json=slow, headers=headers)
    while response.status_code in {404, 503} and time.monotonic() < deadline:  # until the worker is up
        await asyncio.sleep(0.5)
        response = await http.post("/v1/txt2img", json=slow, headers=headers)
    if response.status_code != 202:
        raise SystemExit(f"the slow job was refused: {response.status_code} {response.text}")
    job_id = response.json()["job_id"]
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as events:
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                return


async def _accept_all(url: str, headers: dict[str, str]) -> list[Accept]:
    """Open REQUESTS keep-alive connections, then send one `POST /v1/txt2img` on each at the same moment."""
    host, port = url.removeprefix("http://").split(":")
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(REQUESTS)]
    await asyncio.sleep(CONNECTIONS_SETTLE_S)  # the bridge accepts the connections first; the round times jobs
    try:
        return list(await asyncio.gather(*(_accept(reader, writer, headers) for reader, writer in connections)))
    finally:
        for _, writer in connections:
            writer.close()


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> Accept:
    body = json.dumps(BODY).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST /v1/txt2img HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body
    started = time.perf_counter()
    writer.write(request)
    status, payload = await _read_response(reader)
    latency = time.perf_counter() - started
    job_id = json.loads(payload).get("job_id") if status == 202 else None
    return job_id, latency, status


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (what the bridge sends for a 202)."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in {b"\r\n", b""}:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _finish(http: httpx.AsyncClient, headers: dict[str, str], job_id: str, *, waits: asyncio.Semaphore) -> int:
    """200 once the job succeeded; its status, or 599 for another end or a dropped connection."""
    async with waits:
        try:
            response = await http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 600}, headers=headers)
        except httpx.TransportError:
            return 599
    if response.status_code != 200 or response.json()["status"] != "succeeded":
        return 599 if response.status_code == 200 else response.status_code
    return 200


def _report(row: dict[str, float | str]) -> None:
    health = "ok" if float(row["health_max_ms"]) < HEALTH_TARGET_S * 1000 else "MISSED"
    complete = "ok" if row["completed"] == row["requests"] and row["server_errors"] == 0 else "MISSED"
    print(f"  {row['bridge']}: {ROUNDS} rounds of {REQUESTS} concurrent txt2img, the worker busy")
    print(
        f"    accept p50 {float(row['p50_ms']):.1f} ms, p99 median of rounds {float(row['p99_ms']):.1f} ms "
        f"(worst round {float(row['worst_round_p99_ms']):.1f})"
    )
    print(
        f"    /healthz max {float(row['health_max_ms']):.1f} ms over {float(row['health_probes']):.0f} probes "
        f"({health}, target < 1000); 5xx {float(row['server_errors']):.0f}; completed "
        f"{float(row['completed']):.0f} of {float(row['requests']):.0f} ({complete}); {float(row['total_s']):.1f} s"
    )


def targets_hold(rows: list[dict[str, float | str]]) -> bool:
    """No 5xx, every job completed, health under a second, in every configuration of this code."""
    ours = [row for row in rows if str(row["bridge"]).startswith("this code")]
    return all(
        row["server_errors"] == 0
        and row["completed"] == row["requests"]
        and float(row["health_max_ms"]) < HEALTH_TARGET_S * 1000
        for row in ours
    )


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description="bursts of 200 accepts against one bridge and one busy worker")
    arguments.add_argument("--baseline", type=Path, help="a checkout of other code to measure side by side")
    options = arguments.parse_args()
    sys.exit(0 if targets_hold(main(baseline=options.baseline)) else 1)
