"""Follow one job's events until its terminal state or a deadline: the one wait loop of the client and the bridge.

Events can be lost (a reply queue that was gone during a broker restart, a bridge that subscribed late), so every
quiet spell of `poll_interval_s` also reads the job's result record in the bucket, which workers always write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sdqueue.contracts import JobEvent, TerminalEvent, is_terminal

RECORD_POLL_INTERVAL_S = 5.0

RecordReader = Callable[[], Awaitable[TerminalEvent | None]]


async def follow_job(
    events: asyncio.Queue[JobEvent],
    *,
    read_record: RecordReader,
    timeout_s: float,
    allow_terminal_events: bool,
    poll_interval_s: float = RECORD_POLL_INTERVAL_S,
) -> AsyncIterator[JobEvent | None]:
    """Yield the job's events as they arrive, ending with its terminal one; None after a quiet spell (a keep-alive).

    With `allow_terminal_events`, a terminal event from the broker ends the wait; without it, such an event only
    makes the record worth reading, and the record alone ends the wait. Stops without a terminal event once
    `timeout_s` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        event = await next_event(events, timeout_s=min(remaining, poll_interval_s))
        if event is None or (is_terminal(event) and not allow_terminal_events):
            record = await read_record()
            if record is not None:
                yield record
                return
            event = None
        yield event
        if event is not None and is_terminal(event):
            return


async def next_event(events: asyncio.Queue[JobEvent], *, timeout_s: float) -> JobEvent | None:
    """The next event on the queue, or None after `timeout_s` of quiet."""
    try:
        async with asyncio.timeout(timeout_s):
            return await events.get()
    except TimeoutError:
        return None
