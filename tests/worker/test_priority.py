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
from tests.plugins.stack import WorkerProcess

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from /proc")

# Starts one thread before and one after lowering the priority, then prints every thread's niceness.
PROBE = """
import os, sys, threading
from pathlib import Path
from sdqueue.worker.__main__ import lower_cpu_priority
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
