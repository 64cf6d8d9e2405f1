"""The bridge's CPU per accepted job, beside a bare confirmed publish of the same message.

Rounds of 200 concurrent `POST /v1/txt2img` go through the real app in this process (ASGI calls, no HTTP server and
no load client to share the CPU with), against the real broker; they alternate with rounds of 200 concurrent
`publish_raw` of an equivalent signed message: the token and the confirmed publish that no accept can skip. Both
are measured as this process's CPU time, so the ratio is what HTTP handling, auth and validation add to them.
A third kind of round sends the same accepts through a second app built without the accept lane, so that the
lane's saving is measured side by side. Everything runs on uvloop, the bridge's loop. Run with
`python -m bench.bridge_accept`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import statistics
import sys
from collections.abc import Awaitable, Callable

import aio_pika
import uvloop
from fastapi import FastAPI

from bench._stack import bench_stack
from bench.bridge_load import BODY, REQUESTS, _with_bridge
from sdqueue.bridge import create_app, issue_access_token
from sdqueue.bridge._lane import AcceptLane
from sdqueue.client import SdqueueClient, mint_token, new_job_id, request_message
from sdqueue.config import Settings
from sdqueue.worker.consume import declare_topology

ROUNDS = 8
ROUND_GAP_S = 1.0
MARKER_DRAIN_S = 120.0
Asgi = Callable[..., Awaitable[None]]


def main() -> dict[str, float]:
    """Run the rounds, print the figures, and return them."""
    with bench_stack(threads=1, prefetch=1) as settings:
        # uvloop, as the bridge runs under uvicorn: asyncio's own loop adds about 10 % to every figure here.
        figures = uvloop.run(_measure(_with_bridge(settings)))
    print(f"  {ROUNDS} rounds of {REQUESTS} each, alternating, CPU of this process")
    print(f"  accept (POST /v1/txt2img over ASGI): median {figures['accept_us']:.0f} us")
    print(f"  the same through FastAPI's routing (no accept lane): median {figures['routed_us']:.0f} us")
    print(f"  signed, confirmed publish alone: median {figures['publish_us']:.0f} us")
    print(f"  accept/publish: {figures['accept_us'] / figures['publish_us']:.2f}x")
    print(f"  routed/accept: {figures['routed_us'] / figures['accept_us']:.2f}x")
    return figures


async def _measure(settings: Settings) -> dict[str, float]:
    await _declare_queues(settings)
    app, routed = create_app(settings), _without_lane(create_app(settings))
    token = issue_access_token("bench", bridge=settings.bridge)
    gc.collect()
    gc.freeze()  # as `run_bridge` does
    accepts, routes, publishes = [], [], []
    async with (
        app.router.lifespan_context(app),
        routed.router.lifespan_context(routed),
        SdqueueClient(settings, subject="bench") as client,
    ):
        for _ in range(ROUNDS):
            accepts.append(await _cpu_per_call(lambda: _post_txt2img(app, token)))
            await _settle(app)
            routes.append(await _cpu_per_call(lambda: _post_txt2img(routed, token)))
            await _settle(routed)
            publishes.append(await _cpu_per_call(lambda: _publish(client, settings)))
            await asyncio.sleep(ROUND_GAP_S)
    # The first round of each warms its code paths.
    return {
        "accept_us": statistics.median(accepts[1:]),
        "routed_us": statistics.median(routes[1:]),
        "publish_us": statistics.median(publishes[1:]),
    }


async def _settle(app: FastAPI) -> None:
    """Wait until the app has stored the round's markers: their puts (boto3, in threads) would count as CPU of the
    next round, whichever kind it is."""
    await app.state.bridge.markers.drain(timeout_s=MARKER_DRAIN_S)
    await asyncio.sleep(ROUND_GAP_S)


def _without_lane(app: FastAPI) -> FastAPI:
    """The app with its accept lane taken out before its middleware stack is built: FastAPI routes every request."""
    app.user_middleware = [middleware for middleware in app.user_middleware if not _is_lane(middleware.cls)]
    return app


def _is_lane(factory: object) -> bool:
    return isinstance(factory, type) and issubclass(factory, AcceptLane)


async def _declare_queues(settings: Settings) -> None:
    """The queues a worker would declare, so that publishes route without starting one."""
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        await declare_topology(await connection.channel(), aliases=["default"], delivery_limit=3)


async def _cpu_per_call(call: Callable[[], Awaitable[None]]) -> float:
    started = _cpu_s()
    await asyncio.gather(*(call() for _ in range(REQUESTS)))
    return (_cpu_s() - started) / REQUESTS * 1e6


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _post_txt2img(app: Asgi, token: str) -> None:
    body = json.dumps(BODY).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {token}".encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/txt2img",
        "raw_path": b"/v1/txt2img",
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(str(message["status"])))

    await app(scope, receive, send)
    if statuses != [202]:
        raise SystemExit(f"the bridge answered {statuses}")


async def _publish(client: SdqueueClient, settings: Settings) -> None:
    """What an accept publishes, signed and sent without the bridge."""
    job_id = new_job_id()
    body = json.dumps({"schema_version": 1, "job_id": job_id, "mode": "txt2img", **BODY}).encode()
    token = mint_token(body, job_id=job_id, subject="bench", auth=settings.auth)
    await client.publish_raw(request_message(body, job_id=job_id, token=token), routing_key="default")


if __name__ == "__main__":
    main()
    sys.exit(0)
