"""`python -m sdqueue.worker`: run the worker with settings from the environment."""

from __future__ import annotations

import asyncio
import logging

from sdqueue.config import load_settings
from sdqueue.contracts.errors import UsageError
from sdqueue.worker.logs import setup_logging
from sdqueue.worker.worker import run_worker


def main() -> int:
    """Load settings once, set up logging, and run the worker until it is told to stop."""
    settings = load_settings()
    setup_logging(settings.log_level, log_format=settings.log_format)
    try:
        asyncio.run(run_worker(settings))
    except UsageError as exc:  # the operator's configuration: said in one line, not a traceback
        logging.getLogger("sdqueue.worker").error("the worker cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
