"""The broker permission layout of docs/operations.md on the real broker, and events a client accepts only from workers.

Users are created with `rabbitmqctl` (the tests run on the broker's host) in the isolated stack's vhost and deleted
afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from pydantic import SecretStr

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, ErrorInfo, FailedEvent, SucceededEvent
from sdqueue.contracts.topology import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    REQUESTS_EXCHANGE,
    WEBHOOKS_QUEUE,
    event_routing_key,
    overflow_queue,
)
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, updated

GENERATION_TIMEOUT_S = 90.0
BIND_S = 1.0
# The layout of docs/operations.md ("Broker users"): (configure, write, read) per role.
PERMISSIONS = {
    "worker": (r"^sdqueue\..*", r"^(sdqueue\..*|amq\.default)$", r"^sdqueue\..*"),
    "producer": (
        r"^(sdqueue\.requests|sdqueue\.control|sdqueue\.client\..*)$",
        r"^(sdqueue\.requests|sdqueue\.control|sdqueue\.client\..*)$",
        r"^(sdqueue\.events|sdqueue\.client\..*)$",
    ),
    "observer": (r"^amq\.gen-.*", r"^amq\.gen-.*", r"^(sdqueue\.events|amq\.gen-.*)$"),
}


@dataclass(frozen=True)
class BrokerUsers:
    """One user per role in the isolated vhost, by role: (name, AMQP URL)."""

    users: dict[str, tuple[str, str]]

    def name(self, role: str) -> str:
        return self.users[role][0]

    def url(self, role: str) -> str:
        return self.users[role][1]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_users(isolated: IsolatedStack) -> Iterator[BrokerUsers]:
    vhost_url = urlsplit(isolated.settings.broker.url.get_secret_value())
    vhost = vhost_url.path.lstrip("/")
    suffix = secrets.token_hex(3)
    users = {}
    for role, (configure, write, read) in PERMISSIONS.items():
        name, password = f"sdq-{role}-{suffix}", secrets.token_urlsafe(18)
        _rabbitmqctl("add_user", name, password)
        _rabbitmqctl("set_permissions", "-p", vhost, name, configure, write, read)
        netloc = f"{quote(name)}:{quote(password)}@{vhost_url.hostname}:{vhost_url.port or 5672}"
        users[role] = (name, urlunsplit(vhost_url._replace(netloc=netloc)))
    try:
        yield BrokerUsers(users)
    finally:
        for name, _ in users.values():
            _rabbitmqctl("delete_user", name)


def _as(settings: Settings, url: str, *, worker_user: str) -> Settings:
    return updated(settings, broker={"url": SecretStr(url), "worker_users": (worker_user,)})


async def _refused(url: str, *, exchange: str, routing_key: str, user_id: str | None = None) -> BaseException | None:
    """Publish one message as the URL's user; return the broker's refusal (None if it was accepted)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        try:
            await target.publish(aio_pika.Message(b"{}", user_id=user_id), routing_key=routing_key)
        except (ChannelAccessRefused, ChannelPreconditionFailed) as exc:
            return exc
    return None


async def test_a_producer_cannot_publish_events_overflow_or_webhooks(
    isolated: IsolatedStack, broker_users: BrokerUsers
):
    worker_user = broker_users.name("worker")
    isolated.start_worker("own-user", _as(isolated.settings, broker_users.url("worker"), worker_user=worker_user))
    producer = _as(isolated.settings, broker_users.url("producer"), worker_user=worker_user)
    async with SdqueueClient(producer, subject="tester") as client:
        await client.wait_for_workers("default", timeout_s=120)
        event = await client.generate(txt2img(), timeout_s=GENERATION_TIMEOUT_S)  # the layout is enough to work
        assert await client.cancel(event.job_id)  # producers may write sdqueue.control

    producer_url = broker_users.url("producer")
    refusals = {
        "events": await _refused(producer_url, exchange=EVENTS_EXCHANGE, routing_key="job.x.failed"),
        "overflow": await _refused(producer_url, exchange="", routing_key=overflow_queue("default")),
        "webhooks": await _refused(producer_url, exchange="", routing_key=WEBHOOKS_QUEUE),
        "a worker's user_id": await _refused(
            producer_url, exchange=REQUESTS_EXCHANGE, routing_key="default", user_id=worker_user
        ),
        "observer publishing events": await _refused(
            broker_users.url("observer"), exchange=EVENTS_EXCHANGE, routing_key="job.x.failed"
        ),
    }
    assert all(refusals.values()), {what: exc is not None for what, exc in refusals.items()}
    assert await _refused(producer_url, exchange=CONTROL_EXCHANGE, routing_key="") is None
    assert isinstance(event, SucceededEvent)


async def test_the_client_accepts_events_only_from_worker_users(isolated: IsolatedStack, broker_users: BrokerUsers):
    worker_user = broker_users.name("worker")
    isolated.start_worker("own-user", _as(isolated.settings, broker_users.url("worker"), worker_user=worker_user))
    producer = _as(isolated.settings, broker_users.url("producer"), worker_user=worker_user)
    request = txt2img(width=256, height=256, steps=20)
    forged = FailedEvent(
        job_id=request.job_id,
        model="default",
        worker="forger",
        attempt=1,
        error=ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="forged", retryable=False),
    )
    # guest may do anything in this vhost: a broker without the layout, where only `user_id` tells workers apart.
    forger = await aio_pika.connect(isolated.settings.broker.url.get_secret_value())
    async with forger, SdqueueClient(producer) as submitter, SdqueueClient(producer) as watcher:
        await submitter.wait_for_workers("default", timeout_s=120)
        waiting = asyncio.create_task(watcher.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S))
        await asyncio.sleep(BIND_S)  # the watcher binds `job.<id>.*` on sdqueue.events
        channel = await forger.channel()
        events = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        await events.publish(
            aio_pika.Message(forged.model_dump_json().encode(), user_id="guest"),
            routing_key=event_routing_key(request.job_id, "failed"),
        )
        await submitter.submit(request)

        event = await waiting

    assert isinstance(event, SucceededEvent), f"the client took a forged event: {event}"
    assert event.worker == "own-user"
