"""Transient failures retried through the retry queue: no delivery held during a backoff, one final report."""

from __future__ import annotations

import asyncio
import statistics
import time

import aio_pika
import pytest

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, FailedEvent
from sdqueue.contracts.topology import retry_queue
from sdqueue.worker.generate import GenerationSpec, ImageGenerator
from tests.e2e.requests import txt2img
from tests.plugins.faulty_worker import FAIL_PROMPT
from tests.plugins.isolated import IsolatedStack, queue_depth, updated
from tests.plugins.stack import BrokerProbe

# Long enough for another job to run while the failed one waits in the retry queue: at least this, and many
# times a tiny generation as long as it takes on this machine now (a whole job adds the broker and the bucket).
MIN_BACKOFF_S = 8.0
GENERATIONS_PER_BACKOFF = 40


async def _retry_depth(settings: Settings) -> int:
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(retry_queue("default"), passive=True)
        return int(queue.declaration_result.message_count or 0)


async def _until_the_retry_queue_holds_it(settings: Settings, *, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await _retry_depth(settings):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the failed request never reached the retry queue")


def _backoff_s(generator: ImageGenerator) -> float:
    """A backoff scaled from a tiny generation timed here, so a loaded machine still runs a job within it."""
    request = txt2img()
    spec = GenerationSpec(
        mode="txt2img",
        prompt=request.prompt,
        negative_prompt="",
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seeds=(1,),
        scheduler=None,
        strength=request.effective_strength,
        init_image=None,
    )
    generator.generate(spec)  # the first call in a process also pays torch's one-time set-up
    return max(
        MIN_BACKOFF_S, GENERATIONS_PER_BACKOFF * statistics.median(_seconds_for(generator, spec) for _ in range(3))
    )


def _seconds_for(generator: ImageGenerator, spec: GenerationSpec) -> float:
    started = time.monotonic()
    generator.generate(spec)
    return time.monotonic() - started


@pytest.mark.timeout(600)  # three backoffs, each longer on a loaded machine
async def test_transient_failure_waits_in_the_retry_queue_and_ends_in_one_delivery_limit_exceeded(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe, tiny_generator: ImageGenerator
):
    backoff_s = _backoff_s(tiny_generator)
    settings = updated(
        isolated.settings,
        # One prefetch slot and no fair intake: a job held during a backoff would block every other job.
        broker={"retry_backoff_s": backoff_s, "max_retry_backoff_s": backoff_s, "prefetch": 1},
        fairness={"enabled": False},
    )
    # The faulty worker's generation raises an unexpected (retryable) error for prompts with this marker.
    worker = isolated.start_worker("retrying", settings, faults={FAIL_PROMPT: "POISON"})
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    poison = txt2img(prompt="POISON pill")
    await isolated_client.submit(poison)

    await _until_the_retry_queue_holds_it(settings)
    started = time.monotonic()
    good = await isolated_client.generate(txt2img(), timeout_s=60)

    assert time.monotonic() - started < backoff_s, "the only prefetch slot was held during the backoff"
    assert good.images
    failed = await isolated_client.wait(poison.job_id, timeout_s=4 * backoff_s + 60)
    await asyncio.sleep(0.5)
    assert isinstance(failed, FailedEvent)
    assert failed.error.code is ErrorCode.DELIVERY_LIMIT_EXCEEDED
    assert failed.attempt == settings.broker.delivery_limit + 1
    assert [event.type for event in logs[poison.job_id].events].count("failed") == 1
    assert set(await isolated_probe.dead_letters()) == {poison.job_id}
    assert await _retry_depth(settings) == 0
    assert await queue_depth(settings) == 0
    assert "test fault: generation fails for this prompt" in worker.log_path.read_text()
