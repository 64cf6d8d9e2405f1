"""Item 3: client publish throughput with publisher confirms, many in flight against one at a time.

Requests go through `SdqueueClient.submit` (token minted, mandatory routing, confirm awaited) into a request
queue with no consumer. Target: at least 2,000 requests/s with many in flight.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aio_pika

from bench._stack import bench_stack
from sdqueue.client import SdqueueClient, new_job_id
from sdqueue.config import Settings
from sdqueue.contracts import SCHEMA_VERSION, GenerationRequest
from sdqueue.contracts.topology import requests_queue
from sdqueue.worker.consume import declare_topology

REQUESTS, IN_FLIGHT, SEQUENTIAL = 5000, 256, 500
TARGET_PER_S = 2000.0


async def _declare(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        await declare_topology(await connection.channel(), aliases=["default"], delivery_limit=3)


async def _purge(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        queue = await (await connection.channel()).declare_queue(requests_queue("default"), passive=True)
        await queue.purge()


def _request() -> GenerationRequest:
    return GenerationRequest(
        schema_version=SCHEMA_VERSION, job_id=new_job_id(), mode="txt2img", prompt="a cat", width=64, height=64
    )


async def publish_rates(settings: Settings) -> tuple[float, float]:
    """(requests/s one at a time, requests/s with IN_FLIGHT publishes outstanding)."""
    await _declare(settings)
    async with SdqueueClient(settings, subject="bench") as client:
        started = time.perf_counter()
        for _ in range(SEQUENTIAL):
            await client.submit(_request())
        sequential = SEQUENTIAL / (time.perf_counter() - started)
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def submit_one() -> None:
            async with limit:
                await client.submit(_request())

        started = time.perf_counter()
        await asyncio.gather(*(submit_one() for _ in range(REQUESTS)))
        concurrent = REQUESTS / (time.perf_counter() - started)
    await _purge(settings)
    return sequential, concurrent


def main() -> float:
    """Print both rates and the ratio to the target."""
    with bench_stack() as settings:
        sequential, concurrent = asyncio.run(publish_rates(settings))
    print(f"client publish with confirms, {REQUESTS} requests:")
    print(f"  one at a time       {sequential:8.0f} req/s")
    print(f"  {IN_FLIGHT} in flight       {concurrent:8.0f} req/s ({concurrent / sequential:.1f}x one at a time)")
    verdict = "ok" if concurrent >= TARGET_PER_S else "BELOW TARGET"
    print(f"  vs target {TARGET_PER_S:.0f} req/s: {concurrent / TARGET_PER_S:.2f}x {verdict}")
    return concurrent


if __name__ == "__main__":
    sys.exit(0 if main() >= TARGET_PER_S else 1)
