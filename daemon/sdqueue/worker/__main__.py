"""`python -m sdqueue.worker`: run the worker with settings from the environment."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sdqueue.config import load_settings
from sdqueue.worker.logs import setup_logging
from sdqueue.worker.worker import run_worker


def main() -> int:
    """Load settings once, set up logging, and run the worker until it is told to stop."""
    settings = load_settings()
    setup_logging(settings.log_level, log_format=settings.log_format)
    lower_cpu_priority(settings.runtime.nice)
    asyncio.run(run_worker(settings))
    return 0


def lower_cpu_priority(nice: int) -> None:
    """Make every thread of this process at least `nice`; threads started later inherit it from their starter."""
    # Linux keeps niceness per thread, so each existing one is set; elsewhere `who=0` means the whole process.
    tasks = Path("/proc/self/task")
    thread_ids = [int(entry.name) for entry in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread_id in thread_ids:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, max(current, nice))


if __name__ == "__main__":
    raise SystemExit(main())
