"""Lower the worker's CPU priority, so latency-bound neighbours on its host (a bridge, the broker) answer first.

Three Linux mechanisms, each covering what the one before cannot:

- niceness (`runtime.nice`) ranks the worker's threads against other threads of its own session;
- the session's autogroup niceness ranks the session against other sessions (the broker is started from one of
  its own, and a shell's session is one group to the scheduler); only a worker that leads its session sets it;
- `SCHED_IDLE` on the generation thread of a CPU worker (`runtime.idle_policy`) makes its core count as free when
  the kernel places a waking thread, so the bridge and the broker run there at once instead of queueing on the
  other cores.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

THREADS = Path("/proc/self/task")
AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(nice: int) -> None:
    """Make every thread at least `nice`, and the session's scheduling group too when the worker leads it."""
    renice_threads(nice)
    if os.getsid(0) == os.getpid():
        renice_autogroup(nice)


def renice_threads(nice: int) -> None:
    """Make every thread of this process at least `nice`; threads started later inherit it from their starter."""
    # Linux keeps niceness per thread, so each existing one is set; elsewhere `who=0` means the whole process.
    thread_ids = [int(entry.name) for entry in THREADS.iterdir()] if THREADS.is_dir() else [0]
    for thread_id in thread_ids:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, max(current, nice))


def renice_autogroup(nice: int) -> None:
    """Make this session's autogroup at least `nice`.

    Outside the root cgroup (systemd units, containers) the kernel ignores autogroups and this changes nothing;
    the unit's or container's CPU weight ranks the worker there.
    """
    if not AUTOGROUP.is_file():
        return
    try:
        if autogroup_nice(AUTOGROUP.read_text()) < nice:
            AUTOGROUP.write_text(f"{nice}\n")
    except OSError as exc:
        log.warning("could not lower the CPU priority of the worker's session (%s)", exc)


def autogroup_nice(line: str) -> int:
    """The niceness in a `/proc/PID/autogroup` line such as `/autogroup-85 nice 0`.

    A process still in the init session's default group (no `setsid` since boot, as in many containers) reads an
    empty file; that group is the root one, at niceness 0.
    """
    _, found, nice = line.partition("nice")
    return int(nice) if found else 0


def use_idle_policy() -> None:
    """Run the calling thread, and the threads it starts (torch's), under `SCHED_IDLE` where the OS has it."""
    if not hasattr(os, "SCHED_IDLE"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread, on Linux
    except OSError as exc:
        log.warning("could not run generation under SCHED_IDLE (%s)", exc)
