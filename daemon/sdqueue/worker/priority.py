"""Lower the worker's CPU priority, so latency-bound neighbours on its host (a bridge, the broker) answer first.

Three Linux mechanisms, each covering what the one before cannot:

- niceness (`runtime.nice`) ranks the worker's threads against other threads of its own session;
- the session's autogroup niceness ranks the session against other sessions (the broker is started from one of
  its own, and a shell's session is one group to the scheduler); only a worker that leads its session sets it;
- `SCHED_IDLE` on the generation thread of a CPU worker (`runtime.idle_policy`) makes its core count as free when
  the kernel places a waking thread, so the bridge and the broker run there at once instead of queueing on the
  other cores;
- but a `SCHED_IDLE` thread only yields to threads of its own scheduling group (its session's autogroup, its
  cgroup). Where the host has cgroup v1's cpu hierarchy and lets the worker write to it, the generation thread
  also moves into a child group marked `cpu.idle`, which yields to every other group on the host.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

THREADS = Path("/proc/self/task")
AUTOGROUP = Path("/proc/self/autogroup")
MOUNTS = Path("/proc/self/mounts")
OWN_CGROUPS = Path("/proc/self/cgroup")
# Shared by every worker on the host; an empty group stays behind when the last one exits, and is reused.
IDLE_CGROUP = "sdqueue-generation"


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
    """Run the calling thread, and the threads it starts (torch's), under `SCHED_IDLE` where the OS has it, and
    in an idle cgroup where the host offers one (`join_idle_cgroup`)."""
    if not hasattr(os, "SCHED_IDLE"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread, on Linux
    except OSError as exc:
        log.warning("could not run generation under SCHED_IDLE (%s)", exc)
        return
    group = join_idle_cgroup()
    log.info("generation runs under SCHED_IDLE%s", f", in the idle cgroup {group}" if group else "")


def join_idle_cgroup() -> Path | None:
    """Move the calling thread into `IDLE_CGROUP` below its own cpu cgroup, marked `cpu.idle`; returns the group.

    cgroup v1 only: there one thread can move alone, so the event loop keeps its weight (cgroup v2 would need
    threaded subtrees; systemd's `CPUWeight=idle` covers it for a whole unit). None when the host has no such
    hierarchy, its kernel no `cpu.idle`, or the worker may not write there (not root, no delegation).
    """
    cpu_mount = cgroup_v1_mount(MOUNTS.read_text() if MOUNTS.is_file() else "", controller="cpu")
    own = own_cgroup(OWN_CGROUPS.read_text() if OWN_CGROUPS.is_file() else "", controller="cpu")
    if cpu_mount is None or own is None:
        return None
    group = cpu_mount / own.lstrip("/") / IDLE_CGROUP
    try:
        group.mkdir(exist_ok=True)
        if not (group / "cpu.idle").is_file():
            return None
        (group / "cpu.idle").write_text("1\n")
        (group / "tasks").write_text(f"{threading.get_native_id()}\n")
    except OSError as exc:
        log.debug("no idle cgroup for generation (%s)", exc)
        return None
    return group


def cgroup_v1_mount(mounts: str, *, controller: str) -> Path | None:
    """Where the cgroup v1 hierarchy holding `controller` is mounted, from `/proc/self/mounts`."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and controller in fields[3].split(","):
            return Path(fields[1])
    return None


def own_cgroup(cgroups: str, *, controller: str) -> str | None:
    """This process's group in the v1 hierarchy holding `controller`, from `/proc/self/cgroup`."""
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None
