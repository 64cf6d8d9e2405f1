"""A live progress bar on stderr for one job, drawn from its started and progress events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sdqueue.client import JobFailed, WaitTimeout
from sdqueue.contracts import JobEvent, ProgressEvent, StartedEvent, SucceededEvent


async def follow_job(events: AsyncIterator[JobEvent], *, console: Console, is_shown: bool) -> SucceededEvent:
    """Draw the job's denoising steps as its events arrive (when `is_shown`) and return its success.

    Raises:
        JobFailed: the job failed or was cancelled.
        WaitTimeout: the events ended without an outcome (or the stream's own timeout).
    """
    with _progress_bar(console, is_shown=is_shown) as progress:
        task = progress.add_task("waiting for a worker", total=None)
        async for event in events:
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
