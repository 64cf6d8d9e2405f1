"""Process-wide logging for the worker: text or JSON lines, each job's lines tagged with its job id."""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Literal

NOISY_LOGGERS = ("aio_pika", "aiormq", "botocore", "urllib3", "httpx", "httpcore", "diffusers", "transformers", "PIL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Set by the per-job task; asyncio copies the context into each task, so concurrent jobs do not mix.
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sdqueue_job_id", default=None)


class _JobIdFilter(logging.Filter):
    """Put the running job's id on every record logged inside its task."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, message, job_id, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, *, log_format: Literal["text", "json"] = "text") -> None:
    """Log to stderr at `level` as text or JSON lines; chatty libraries log warnings and above only."""
    handler = logging.StreamHandler()
    handler.addFilter(_JobIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
