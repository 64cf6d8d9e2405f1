"""Several bridge processes (or replicas) on one bucket: a job accepted by one is readable through any other.

Each test takes `client`, which waits for the session's worker, so the queues exist.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from sdqueue.bridge._markers import new_bridge_job_id
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.devstack.stack import worker_environment
from tests.bridge.conftest import LIVE_LIMITS, bridge_process, make_bridge_settings, running_app, sign_in
from tests.bridge.test_jobs import assert_error, submit, wait

MARKER_WAIT_S = 2.0
JOBS = 12


RESTART_TIMEOUT_S = 30.0


def _peers(bridge_settings: Settings) -> Settings:
    return bridge_settings.model_copy(
        update={"bridge": bridge_settings.bridge.model_copy(update={"marker_wait_s": MARKER_WAIT_S})}
    )


async def test_a_job_accepted_by_one_process_is_read_through_another(bridge_settings: Settings, client: SdqueueClient):
    settings = _peers(bridge_settings)
    async with running_app(settings) as accepting, running_app(settings) as reading:
        alice = await sign_in(accepting, "alice")
        job_id = await submit(accepting, alice)

        # Its marker is still pending in the accepting process: the reading one waits for it to land.
        status = await reading.get(f"/v1/jobs/{job_id}", headers=alice)

        assert status.status_code == 200, status.text
        assert status.json()["job_id"] == job_id
        assert (await wait(reading, alice, job_id))["status"] == "succeeded"


async def test_another_process_still_hides_a_fresh_job_from_other_callers(
    bridge_settings: Settings, client: SdqueueClient
):
    settings = _peers(bridge_settings)
    async with running_app(settings) as accepting, running_app(settings) as reading:
        job_id = await submit(accepting, await sign_in(accepting, "alice"))

        response = await reading.get(f"/v1/jobs/{job_id}", headers=await sign_in(reading, "bob"))

        assert_error(response, 404, "not_found")


async def test_only_a_fresh_unknown_job_id_waits_for_a_marker(bridge_settings: Settings, client: SdqueueClient):
    async with running_app(_peers(bridge_settings)) as api:
        alice = await sign_in(api, "alice")

        started = time.monotonic()
        assert_error(await api.get(f"/v1/jobs/{new_bridge_job_id()}", headers=alice), 404, "not_found")
        fresh_s = time.monotonic() - started
        started = time.monotonic()
        old = new_bridge_job_id(now_s=time.time() - 60)
        assert_error(await api.get(f"/v1/jobs/{old}", headers=alice), 404, "not_found")
        old_s = time.monotonic() - started

    assert fresh_s >= MARKER_WAIT_S * 0.8, "a fresh id gave up before a peer's marker could land"
    assert old_s < MARKER_WAIT_S * 0.5, "an old id waited for a marker that can no longer come"


def _two_processes(stack_settings: Settings, users_file: Path, state_dir: Path) -> Settings:
    settings = make_bridge_settings(stack_settings, users_file=users_file)
    bridge = settings.bridge.model_copy(update={"processes": 2})
    return settings.model_copy(update={"bridge": bridge, "limits": LIVE_LIMITS, "state_dir": state_dir})


async def test_a_bridge_of_two_processes_serves_and_counts_as_one(
    stack_settings: Settings, users_file: Path, tmp_path: Path, client: SdqueueClient
):
    settings = _two_processes(stack_settings, users_file, tmp_path)

    with bridge_process(settings, log_path=tmp_path / "bridge.log") as live:
        # No keep-alive: every request is a new connection, so requests land on both processes.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=live.url, timeout=90.0, limits=limits) as http:
            alice = await sign_in(http, "alice")
            job_ids = await asyncio.gather(*(submit(http, alice) for _ in range(JOBS)))
            statuses = await asyncio.gather(*(http.get(f"/v1/jobs/{job_id}", headers=alice) for job_id in job_ids))
            results = await asyncio.gather(*(wait(http, alice, job_id) for job_id in job_ids))
            metrics = (await http.get("/metrics")).text

    assert [status.status_code for status in statuses] == [200] * JOBS
    assert [result["status"] for result in results] == ["succeeded"] * JOBS
    # Each process keeps its values in files named by its pid; /metrics sums them.
    assert len({path.stem.rsplit("_", 1)[1] for path in (tmp_path / "bridge-metrics").glob("*.db")}) == 2
    assert f'sdqueue_bridge_jobs_submitted_total{{mode="txt2img"}} {float(JOBS)}' in metrics


async def test_a_bridge_process_that_dies_is_replaced_and_its_live_gauge_dropped(
    stack_settings: Settings, users_file: Path, tmp_path: Path, client: SdqueueClient
):
    settings = _two_processes(stack_settings, users_file, tmp_path)

    with bridge_process(settings, log_path=tmp_path / "bridge.log") as live:
        first = _serving_processes(live.pid, count=2)
        gauges = tmp_path / "bridge-metrics"
        _wait_for(lambda: all((gauges / f"gauge_livesum_{pid}.db").exists() for pid in first))
        os.kill(first[0], signal.SIGKILL)
        second = _serving_processes(live.pid, count=2, without=first[0])
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as http:
            ready = await http.get("/readyz")

    assert first[1] in second
    assert ready.status_code == 200
    assert "died" in (tmp_path / "bridge.log").read_text()
    assert (gauges / f"gauge_livesum_{first[1]}.db").exists()
    assert not (gauges / f"gauge_livesum_{first[0]}.db").exists()


def test_a_taken_port_stops_a_bridge_of_several_processes_at_once(
    stack_settings: Settings, users_file: Path, tmp_path: Path
):
    settings = _two_processes(stack_settings, users_file, tmp_path)
    with socket.socket() as taken:
        taken.bind((settings.bridge.host, settings.bridge.port))
        taken.listen()
        finished = subprocess.run(
            [sys.executable, "-m", "sdqueue", "bridge"],
            env=worker_environment(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert finished.returncode == 1
    assert f"cannot listen on {settings.bridge.host}:{settings.bridge.port}" in finished.stderr


def _serving_processes(supervisor: int, *, count: int, without: int | None = None) -> list[int]:
    """The supervisor's serving children once there are `count` of them (and none is `without`)."""
    found: list[int] = []

    def ready() -> bool:
        found[:] = sorted(pid for pid in _children(supervisor) if b"spawn_main" in _cmdline(pid))
        return len(found) == count and without not in found

    _wait_for(ready)
    return found


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition.__name__}"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""
