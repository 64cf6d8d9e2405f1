"""The serving parts around the job path, each on its own: settling, the cancel registry, the health endpoint and
the heartbeat message. The real broker proves them together in tests/e2e (cancel, fleet, metrics) and tests/faults."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from aio_pika.exceptions import ChannelInvalidStateError

from sdqueue.contracts import WorkerHeartbeat
from sdqueue.worker.control import CancelRequest, JobRegistry
from sdqueue.worker.health import Readiness, serve_health
from sdqueue.worker.heartbeat import send_heartbeat
from sdqueue.worker.settle import settle
from sdqueue.worker.verify import Caller

ALICE, MALLORY = Caller("sdqueue", "alice"), Caller("sdqueue", "mallory")


@dataclass
class RecordingMessage:
    """Records how it was settled; `broken` makes every settle fail as on a closed channel."""

    calls: list[tuple[str, bool]] = field(default_factory=list)
    broken: bool = False

    async def ack(self) -> None:
        self._record("ack", requeue=False)

    async def reject(self, requeue: bool = False) -> None:
        self._record("reject", requeue=requeue)

    def _record(self, name: str, *, requeue: bool) -> None:
        if self.broken:
            raise ChannelInvalidStateError("channel closed")
        self.calls.append((name, requeue))


async def test_each_settlement_maps_to_its_broker_call():
    outcomes = {}
    for settlement in ("ack", "reject", "requeue"):
        message = RecordingMessage()
        await settle(cast(Any, message), settlement, job_id="job")
        outcomes[settlement] = message.calls
    # A requeue is a reject with requeue: from RabbitMQ 4.3 only that raises a quorum queue's delivery count.
    assert outcomes == {"ack": [("ack", False)], "reject": [("reject", False)], "requeue": [("reject", True)]}


async def test_a_settle_on_a_closed_channel_is_logged_not_raised(caplog):
    await settle(cast(Any, RecordingMessage(broken=True)), "ack", job_id="job-9")

    assert "job-9: could not ack" in caplog.text


def test_only_the_owner_or_an_admin_stops_a_running_job():
    registry = JobRegistry()
    stop = registry.start("job", owner=ALICE)
    assert stop is not None

    assert registry.cancel(CancelRequest(job_id="job", caller=MALLORY, is_admin=False)) == "refused"
    assert not stop.is_set()
    assert registry.cancel(CancelRequest(job_id="job", caller=ALICE, is_admin=False)) == "stopping"
    assert stop.is_set()


def test_a_cancel_before_the_job_arrives_applies_to_its_owner_only():
    registry = JobRegistry()
    registry.cancel(CancelRequest(job_id="job", caller=MALLORY, is_admin=False))
    assert registry.start("job", owner=ALICE) is not None  # another caller's cancel is no cancel
    registry.finish("job")

    registry.cancel(CancelRequest(job_id="job", caller=ALICE, is_admin=False))
    assert registry.start("job", owner=ALICE) is None


async def test_the_health_endpoint_answers_liveness_readiness_and_metrics():
    readiness = Readiness(is_broker_up=lambda: True)
    async with (
        serve_health(readiness, metrics=lambda: b"sdqueue_jobs_total 3\n", host="127.0.0.1", port=0) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        not_ready = await http.get("/readyz")
        readiness.is_storage_up = True
        ready = await http.get("/readyz")
        alive, metrics, missing = await asyncio.gather(http.get("/healthz"), http.get("/metrics"), http.get("/x"))

    assert (not_ready.status_code, not_ready.json()) == (503, {"ready": False, "broker": True, "storage": False})
    assert (ready.status_code, ready.json()["ready"]) == (200, True)
    assert alive.json() == {"status": "alive"}
    assert metrics.text == "sdqueue_jobs_total 3\n"
    assert missing.status_code == 404


@dataclass
class RecordingExchange:
    published: list[tuple[Any, str]] = field(default_factory=list)

    async def publish(self, message: Any, routing_key: str, *, mandatory: bool = True) -> None:
        self.published.append((message, routing_key))


async def test_a_heartbeat_is_sent_as_the_worker_user_and_expires_after_three_intervals():
    exchange = RecordingExchange()
    heartbeat = WorkerHeartbeat(
        worker="w1", state="ready", models=("default",), loaded=("default",), device="cpu", in_flight=0, interval_s=5
    )

    await send_heartbeat(cast(Any, exchange), heartbeat, timeout_s=1.0, user_id="sdqueue")

    [(message, routing_key)] = exchange.published
    assert WorkerHeartbeat.model_validate_json(message.body) == heartbeat
    assert message.user_id == "sdqueue"
    assert float(message.expiration) == 15
    assert routing_key.endswith("w1")
