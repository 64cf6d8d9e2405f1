"""The progress bar of `sdqueue generate`, drawn from an in-memory event stream onto a captured terminal.

The real stack proves the same bar in tests/e2e/test_cli_generate.py; these cover what a healthy job never shows.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from sdqueue.cli.progress import follow_job
from sdqueue.client import JobFailed, UsageError, WaitTimeout
from sdqueue.contracts import (
    ErrorCode,
    ErrorInfo,
    FailedEvent,
    JobEvent,
    PreviewImage,
    ProgressEvent,
    StartedEvent,
    SucceededEvent,
    Timings,
)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FIELDS = {"job_id": "job-1", "model": "default", "worker": "w1", "attempt": 1}


async def _stream(*events: JobEvent) -> AsyncIterator[JobEvent]:
    for event in events:
        yield event


def _terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=100), screen


def _frames(screen: io.StringIO) -> list[str]:
    """Each redraw of the bar, as plain text."""
    return [frame.strip() for frame in ANSI_ESCAPE.sub("", screen.getvalue()).split("\r") if frame.strip()]


async def test_a_lost_last_step_still_ends_the_bar_full():
    console, screen = _terminal()
    succeeded = SucceededEvent(**FIELDS, images=[], timings=Timings())
    events = _stream(StartedEvent(**FIELDS), ProgressEvent(**FIELDS, step=4, steps=10), succeeded)

    outcome = await follow_job(events, console=console, is_shown=True)

    assert outcome == succeeded
    frames = _frames(screen)
    assert any(frame.startswith("generating") and "4/10 steps" in frame for frame in frames)
    assert frames[-1].startswith("done")
    assert "10/10 steps" in frames[-1]


async def test_a_failed_job_raises_with_its_code_and_the_bar_says_so():
    console, screen = _terminal()
    error = ErrorInfo(code=ErrorCode.OUT_OF_MEMORY, message="out of memory", retryable=True)

    with pytest.raises(JobFailed) as raised:
        await follow_job(_stream(FailedEvent(**FIELDS, error=error)), console=console, is_shown=True)

    assert raised.value.code is ErrorCode.OUT_OF_MEMORY
    assert _frames(screen)[-1].startswith("failed")


async def test_a_hidden_bar_draws_nothing_and_a_stream_without_outcome_times_out():
    console, screen = _terminal()

    with pytest.raises(WaitTimeout):
        await follow_job(_stream(ProgressEvent(**FIELDS, step=1, steps=2)), console=console, is_shown=False)

    assert screen.getvalue() == ""


def _preview(width_px: int, payload: bytes) -> PreviewImage:
    return PreviewImage(width=width_px, height=32, data=base64.b64encode(payload).decode())


async def test_the_bar_shows_the_latest_previews_size_and_the_file_holds_its_bytes(tmp_path: Path):
    console, screen = _terminal()
    target = tmp_path / "preview.webp"
    events = _stream(
        ProgressEvent(**FIELDS, step=1, steps=4, preview=_preview(48, b"RIFF-first")),
        ProgressEvent(**FIELDS, step=2, steps=4),
        ProgressEvent(**FIELDS, step=3, steps=4, preview=_preview(64, b"RIFF-second")),
        SucceededEvent(**FIELDS, images=[], timings=Timings()),
    )

    await follow_job(events, console=console, is_shown=True, preview_file=target)

    frames = _frames(screen)
    assert any("2/4 steps" in frame and "preview 48x32" in frame for frame in frames)
    assert "preview 64x32" in frames[-1]
    assert target.read_bytes() == b"RIFF-second"
    assert _names(tmp_path) == ["preview.webp"]  # nothing written aside is left behind


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_a_preview_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path):
    console, _ = _terminal()
    events = _stream(ProgressEvent(**FIELDS, step=1, steps=4, preview=_preview(8, b"RIFF")))

    with pytest.raises(UsageError, match="cannot write the preview"):
        await follow_job(events, console=console, is_shown=False, preview_file=tmp_path / "missing" / "p.webp")
