"""JSON log lines carry the job id of the task that logged them, and nothing else's."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from sdqueue.worker.logs import current_job_id, setup_logging


@pytest.fixture
def captured_json_logs():
    setup_logging("INFO", log_format="json")
    root = logging.getLogger()
    stream = io.StringIO()
    handler = root.handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    logging.basicConfig(force=True)


async def test_concurrent_jobs_log_their_own_ids(captured_json_logs: io.StringIO):
    log = logging.getLogger("sdqueue.test")

    async def job(job_id: str) -> None:
        current_job_id.set(job_id)
        await asyncio.sleep(0)
        log.info("working on it")

    await asyncio.gather(job("job-a"), job("job-b"))
    log.warning("outside any job")

    lines = [json.loads(line) for line in captured_json_logs.getvalue().splitlines()]
    assert [(line.get("job_id"), line["message"]) for line in lines] == [
        ("job-a", "working on it"),
        ("job-b", "working on it"),
        (None, "outside any job"),
    ]
    assert all(line["at"].endswith("Z") and line["logger"] == "sdqueue.test" for line in lines)
