"""A live progress bar on stderr for one job, drawn from its started and progress events, with its latest preview's
size; the preview itself can be kept in a file as it arrives."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import AsyncIterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sdqueue.client import JobFailed, UsageError, WaitTimeout
from sdqueue.contracts import JobEvent, PreviewImage, ProgressEvent, StartedEvent, SucceededEvent


async def follow_job(
    events: AsyncIterator[JobEvent], *, console: Console, is_shown: bool, preview_file: Path | None = None
) -> SucceededEvent:
    """Draw the job's denoising steps as its events arrive (when `is_shown`), write each preview to `preview_file`
    (when set), and return the job's success.

    Raises:
        JobFailed: the job failed or was cancelled.
        WaitTimeout: the events ended without an outcome (or the stream's own timeout).
        UsageError: `preview_file` cannot be written.
    """
    with _progress_bar(console, is_shown=is_shown) as progress:
        task = progress.add_task("waiting for a worker", total=None, preview="")
        async for event in events:
            if isinstance(event, ProgressEvent) and event.preview is not None:
                progress.update(task, preview=f"preview {event.preview.width}x{event.preview.height}")
                if preview_file is not None:
                    await asyncio.to_thread(save_preview, event.preview, preview_file)
            _show(event, progress=progress, task=task)
            if isinstance(event, SucceededEvent):
                return event
            if not isinstance(event, StartedEvent | ProgressEvent):
                raise JobFailed(event)
    raise WaitTimeout("the job's events ended without an outcome")


def _progress_bar(console: Console, *, is_shown: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[preview]}"),
        console=console,
        disable=not is_shown,
    )


def _show(event: JobEvent, *, progress: Progress, task: TaskID) -> None:
    # Each event is redrawn at once: the worker already throttles progress, and a fast job ends between timed redraws.
    if isinstance(event, ProgressEvent):
        progress.update(task, description="generating", total=event.steps, completed=event.step, refresh=True)
    elif isinstance(event, StartedEvent):
        progress.update(task, description="generating", refresh=True)
    elif isinstance(event, SucceededEvent):
        # A progress event lost on the way should not leave the bar short of a finished job.
        total = progress.tasks[task].total
        progress.update(task, description="done", completed=total or 0, refresh=True)
    else:
        progress.update(task, description=event.type, refresh=True)


def save_preview(preview: PreviewImage, path: Path) -> None:
    """Replace `path` with the preview's WebP bytes at once (written aside, then renamed), so a viewer that reloads the
    file never reads half of one.

    Raises:
        UsageError: the file cannot be written.
    """
    try:
        data = base64.b64decode(preview.data, validate=True)
    except binascii.Error:
        return  # a worker's preview that is not base64 is not worth failing the job over; the next one may be
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        raise UsageError(f"cannot write the preview to {path}: {exc.strerror}") from exc
