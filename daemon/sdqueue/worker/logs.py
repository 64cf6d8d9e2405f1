"""Process-wide logging set-up for the worker: one line per record, third-party noise turned down."""

from __future__ import annotations

import logging

NOISY_LOGGERS = ("aio_pika", "aiormq", "botocore", "urllib3", "diffusers", "transformers", "PIL")


def setup_logging(level: str) -> None:
    """Log to stderr at `level`; chatty libraries log warnings and above only."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
