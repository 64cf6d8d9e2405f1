"""POST one signed webhook, retrying with exponential backoff until the receiver answers 2xx or attempts run out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

import httpx

from sdqueue.config import WebhookSettings
from sdqueue.contracts.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_signature
from sdqueue.worker.webhooks._targets import resolve_target
from sdqueue.worker.webhooks._tasks import WebhookTask

log = logging.getLogger(__name__)

USER_AGENT = "sdqueue-webhooks/1"

WebhookOutcome = Literal["delivered", "retry", "dead_lettered", "refused"]
OnOutcome = Callable[[WebhookOutcome], None]


def backoff_s(attempt: int, *, webhooks: WebhookSettings) -> float:
    """Delay after failed attempt `attempt` (1-based): `backoff_s`, doubling each time, capped at `max_backoff_s`."""
    return float(min(webhooks.backoff_s * 2 ** (attempt - 1), webhooks.max_backoff_s))


async def deliver_webhook(
    task: WebhookTask, *, secret: str, http: httpx.AsyncClient, webhooks: WebhookSettings, on_outcome: OnOutcome
) -> bool:
    """POST the task's body to its URL, signed afresh each attempt; True once a 2xx arrives, False after the last.

    `on_outcome` hears of each retry; the final outcome is the caller's to report.

    Raises:
        Forbidden: the target is not allowed (a retry cannot help).
    """
    for attempt in range(1, webhooks.max_attempts + 1):
        problem = await post_once(task, secret=secret, http=http, webhooks=webhooks)
        if problem is None:
            log.info("job %s: webhook %s delivered on attempt %d", task.job_id, task.event_id, attempt)
            return True
        if attempt == webhooks.max_attempts:
            log.warning("job %s: webhook %s attempt %d failed (%s)", task.job_id, task.event_id, attempt, problem)
            break
        delay_s = backoff_s(attempt, webhooks=webhooks)
        log.info(
            "job %s: webhook %s attempt %d failed (%s); retrying in %.2fs",
            task.job_id,
            task.event_id,
            attempt,
            problem,
            delay_s,
        )
        on_outcome("retry")
        await asyncio.sleep(delay_s)
    return False


async def post_once(
    task: WebhookTask, *, secret: str, http: httpx.AsyncClient, webhooks: WebhookSettings
) -> str | None:
    """One signed POST; None on a 2xx, otherwise what went wrong, for the log.

    Raises:
        Forbidden: the target is not allowed.
    """
    timestamp = int(time.time())
    try:
        target = await resolve_target(task.url, webhooks=webhooks)
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: task.event_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: webhook_signature(task.body, secret=secret, timestamp=timestamp),
        }
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        async with (
            asyncio.timeout(webhooks.timeout_s),
            # Streamed and never read: a receiver cannot make the relay buffer a large answer.
            http.stream("POST", target.url, content=task.body, headers=headers, extensions=extensions) as response,
        ):
            status = response.status_code
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"
