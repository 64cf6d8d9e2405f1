"""The worker runs at a lower CPU priority (`runtime.nice`): every thread, including those it starts later."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdqueue.client import SdqueueClient
from sdqueue.config import RuntimeSettings
from sdqueue.worker.priority import AUTOGROUP, autogroup_nice, use_idle_policy
from sdqueue.worker.worker import generation_thread_setup
from tests.plugins.stack import WorkerProcess

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from /proc")

# Starts one thread before and one after lowering the priority, then prints every thread's niceness.
PROBE = """
import os, sys, threading
from pathlib import Path
from sdqueue.worker.priority import lower_cpu_priority
release = threading.Event()
before = threading.Thread(target=release.wait)
before.start()
lower_cpu_priority(int(sys.argv[1]))
after = threading.Thread(target=release.wait)
after.start()
print(*(os.getpriority(os.PRIO_PROCESS, int(tid.name)) for tid in Path("/proc/self/task").iterdir()))
release.set()
"""


def thread_niceness(*, nice: int, start_at: int = 0) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(nice)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.nice(start_at),  # only raises niceness; no locks held
    )
    return [int(value) for value in result.stdout.split()]


def process_niceness(pid: int) -> list[int]:
    """The niceness of each thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    stats = Path(f"/proc/{pid}/task").glob("*/stat")
    return [int(stat.read_text().rsplit(")", 1)[1].split()[16]) for stat in stats]


def test_every_thread_gets_the_configured_niceness():
    niceness = thread_niceness(nice=10)

    assert len(niceness) >= 3  # main, one thread started before and one after (imports may start more)
    assert set(niceness) == {10}


def test_a_worker_started_nicer_keeps_its_own_value():
    niceness = thread_niceness(nice=10, start_at=15)

    assert len(niceness) >= 3
    assert set(niceness) == {15}


async def test_the_running_worker_generates_at_the_default_niceness(worker: WorkerProcess, client: SdqueueClient):
    niceness = await asyncio.to_thread(process_niceness, worker.process.pid)

    assert RuntimeSettings().nice == 10
    assert len(niceness) > 2  # the event loop, the generation thread, the libraries' threads
    assert set(niceness) == {10}


def thread_policies(pid: int) -> dict[int, int]:
    """Each thread's scheduling policy (field 41 of /proc/PID/task/TID/stat), by thread id."""
    stats = Path(f"/proc/{pid}/task").glob("*/stat")
    return {int(stat.parent.name): int(stat.read_text().rsplit(")", 1)[1].split()[38]) for stat in stats}


def autogroup_of(pid: int) -> int:
    return autogroup_nice(Path(f"/proc/{pid}/autogroup").read_text())


def test_autogroup_lines_parse_including_the_default_groups_empty_one():
    assert autogroup_nice("/autogroup-85 nice 10\n") == 10
    assert autogroup_nice("/autogroup-3 nice -5\n") == -5
    assert autogroup_nice("") == 0  # the init session's group, which the kernel prints as nothing


needs_autogroup = pytest.mark.skipif(not AUTOGROUP.is_file(), reason="the kernel has no autogroup scheduling")


@needs_autogroup
async def test_a_worker_leading_its_session_lowers_the_session_too(worker: WorkerProcess, client: SdqueueClient):
    assert os.getsid(worker.process.pid) == worker.process.pid  # start_worker gives it a session of its own
    assert autogroup_of(worker.process.pid) == 10
    assert autogroup_of(os.getpid()) < 10  # this test's own session is left alone


@needs_autogroup
def test_a_worker_inside_another_session_leaves_that_session_alone():
    probe = "import sys; from sdqueue.worker.priority import lower_cpu_priority; lower_cpu_priority(12)"
    before = autogroup_of(os.getpid())

    subprocess.run([sys.executable, "-c", probe], check=True)

    assert autogroup_of(os.getpid()) == before


async def test_a_cpu_worker_generates_under_sched_idle(worker: WorkerProcess, client: SdqueueClient):
    policies = await asyncio.to_thread(thread_policies, worker.process.pid)

    assert policies[worker.process.pid] == os.SCHED_OTHER  # the event loop: heartbeats, intake, uploads
    assert os.SCHED_IDLE in policies.values()  # the generation thread


def test_gpu_workers_and_opted_out_workers_keep_the_normal_policy():
    assert generation_thread_setup(RuntimeSettings(device="cpu")) is use_idle_policy
    assert generation_thread_setup(RuntimeSettings(device="cpu", idle_policy=False)) is None
    # `cuda` is only named here, never opened: resolving a device name needs no GPU.
    assert generation_thread_setup(RuntimeSettings(device="cuda")) is None
