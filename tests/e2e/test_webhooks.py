"""Signed webhooks end to end: a real worker, broker, bucket and an HTTP receiver on loopback.

A webhook arrives signed and verifies with the documented recipe, a forged one fails, a receiver that is down gets
retries while generation goes on, the job is acked once, and a callback off the allow-list is `forbidden` up front.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from typing import Any

import aio_pika
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdqueue.client import InvalidWebhook, SdqueueClient, verify_webhook
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, FailedEvent, SucceededEvent
from sdqueue.contracts.topology import CALLBACK_URL_HEADER, TASK_SIGNATURE_HEADER, WEBHOOKS_QUEUE
from sdqueue.devstack.stack import stop_process, worker_environment
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, free_port, queue_depth, updated
from tests.plugins.stack import BrokerProbe, WorkerProcess
from tests.plugins.webhook_receiver import WebhookReceiver, documented_verify, receiving

READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 60.0
# The standalone relay must run with torch, diffusers and transformers unimportable.
BLOCK_HEAVY = "import sys\nfor name in ('torch', 'diffusers', 'transformers'):\n    sys.modules[name] = None\n"
RUN_RELAY = "raise SystemExit(main(['webhooks', 'relay']))"


def _with_webhooks(stack: IsolatedStack, *allowed_hosts: str, **overrides: Any) -> Settings:
    """The stack's settings with these hosts allowed, a fast retry schedule (0.2 s doubling to 0.8 s), no warm-up."""
    fields = {"allowed_hosts": allowed_hosts, "backoff_s": 0.2, "max_backoff_s": 0.8, "max_attempts": 10}
    return updated(stack.settings, webhooks={**fields, "timeout_s": 2.0, **overrides}, runtime={"warmup_steps": 0})


def _secret(settings: Settings) -> str:
    assert settings.webhooks.secret is not None
    return settings.webhooks.secret.get_secret_value()


async def _webhook_queue_depth(settings: Settings) -> int:
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(WEBHOOKS_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def _webhook_counts(health_port: int) -> dict[str, float]:
    """The worker's `sdqueue_webhooks_total` samples by outcome."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{health_port}/metrics", timeout=5)
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "sdqueue_webhooks_total"
    }


def _log_count(worker: WorkerProcess, text: str) -> int:
    """How often `text` appears in a worker's log."""
    return worker.log_path.read_text(errors="replace").count(text)


async def _publish_task(settings: Settings, *, url: str, signature: str, message_id: str) -> None:
    """Put a webhook task on the queue as any broker user could, and wait for the broker's confirm."""
    task = aio_pika.Message(
        b'{"job_id": "forged"}',
        message_id=message_id,
        headers={CALLBACK_URL_HEADER: url, TASK_SIGNATURE_HEADER: signature},
    )
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(task, routing_key=WEBHOOKS_QUEUE)


async def test_a_webhook_arrives_signed_and_a_forged_one_fails(isolated: IsolatedStack, isolated_client: SdqueueClient):
    port = free_port()
    settings = _with_webhooks(isolated, f"127.0.0.1:{port}")
    secret = _secret(settings)
    async with receiving(port) as receiver:
        isolated.start_worker("hooked", settings)
        await isolated_client.wait_for_workers("default", timeout_s=READY_TIMEOUT_S)
        request = txt2img(callback_url=receiver.url("/hooks/sdqueue?tenant=7"), metadata={"order": "42"})
        await isolated_client.submit(request)
        event = await isolated_client.wait(request.job_id, timeout_s=JOB_TIMEOUT_S)
        arrived = await receiver.wait_for(1, timeout_s=30)

    assert isinstance(event, SucceededEvent), f"{event}\n{isolated.logs()}"
    assert len(receiver.received) == 1, isolated.logs()
    webhook = arrived[0]
    assert (webhook.method, webhook.target) == ("POST", "/hooks/sdqueue?tenant=7")
    # The documented recipe, with nothing but the standard library.
    timestamp = webhook.header("Sdqueue-Timestamp")
    signed = timestamp.encode() + b"." + webhook.body
    expected = "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(webhook.header("Sdqueue-Signature"), expected)
    assert documented_verify()(webhook.body, webhook.headers, secret) is True
    assert abs(time.time() - int(timestamp)) < 60
    assert json.loads(webhook.body) == json.loads(event.model_dump_json())
    assert webhook.header("Sdqueue-Event-Id") == hashlib.sha256(webhook.body).hexdigest()[:32]
    # And with the client's helper, which also returns the event, equal to the job's record.
    received = verify_webhook(webhook.body, webhook.headers, secret=secret)
    assert received == event == await isolated_client.read_record(request.job_id)
    assert received.metadata == {"order": "42"}
    # A forged body, a guessed secret and a replay after the window all fail.
    forged_body = webhook.body.replace(b'"type":"succeeded"', b'"type":"failed"')
    assert forged_body != webhook.body
    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(forged_body, webhook.headers, secret=secret)
    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(webhook.body, webhook.headers, secret="a-guessed-secret-that-is-long-enough-000")
    with pytest.raises(InvalidWebhook, match="away from now"):
        verify_webhook(webhook.body, webhook.headers, secret=secret, now=int(timestamp) + 301)


async def test_a_receiver_that_is_down_gets_retries_and_the_job_is_acked_once(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    port, health_port = free_port(), free_port()
    settings = _with_webhooks(isolated, f"127.0.0.1:{port}", max_attempts=20)
    worker = isolated.start_worker("patient", settings.model_copy(update={"health_port": health_port}))
    await isolated_client.wait_for_workers("default", timeout_s=READY_TIMEOUT_S)
    receiver = WebhookReceiver(port=port, statuses=[503])
    hooked = txt2img(callback_url=receiver.url())
    log = await isolated_probe.watch(hooked.job_id)
    await isolated_client.submit(hooked)
    assert isinstance(await isolated_client.wait(hooked.job_id, timeout_s=JOB_TIMEOUT_S), SucceededEvent)

    # The receiver is down, and the next job still runs at once: delivery never holds up generation.
    other = txt2img()
    await isolated_client.submit(other)
    assert isinstance(await isolated_client.wait(other.job_id, timeout_s=JOB_TIMEOUT_S), SucceededEvent)
    await asyncio.sleep(1.0)
    await receiver.start()
    try:
        accepted = await receiver.wait_for(1, timeout_s=30)
    finally:
        await receiver.stop()

    assert [item.status for item in receiver.received] == [503, 200], isolated.logs()
    assert len(accepted) == 1
    assert len({item.header("Sdqueue-Event-Id") for item in receiver.received}) == 1
    assert verify_webhook(accepted[0].body, accepted[0].headers, secret=_secret(settings)).job_id == hooked.job_id
    counted = await _webhook_counts(health_port)
    assert counted["delivered"] == 1
    assert counted["retry"] == len(receiver.received) - 1 + _log_count(worker, "failed (ConnectError)")
    assert stop_process(worker.process, timeout_s=30) == 0
    worker_log = worker.log_path.read_text(errors="replace")
    assert worker_log.count("failed (ConnectError); retrying in") >= 2, worker_log
    assert "failed (HTTP 503); retrying in" in worker_log
    assert len(log.of_type("succeeded")) == 1
    assert await queue_depth(isolated.settings) == 0  # the worker is gone, so nothing is unacked either
    assert await _webhook_queue_depth(isolated.settings) == 0
    assert await isolated_probe.dead_letters() == {}


async def test_a_callback_off_the_allow_list_is_forbidden_and_a_forged_task_is_not_sent(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    port = free_port()
    settings = _with_webhooks(isolated, f"127.0.0.1:{port}")
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:{free_port()}/",
        f"http://localhost:{port}/",
        f"https://127.0.0.1:{port}.evil.example/",
    ]
    async with receiving(port) as receiver:
        isolated.start_worker("guarded", settings)
        await isolated_client.wait_for_workers("default", timeout_s=READY_TIMEOUT_S)
        for url in urls:
            request = txt2img(callback_url=url)
            log = await isolated_probe.watch(request.job_id)
            await isolated_client.submit(request)
            event = await isolated_client.wait(request.job_id, timeout_s=JOB_TIMEOUT_S)

            assert isinstance(event, FailedEvent), event
            assert event.error.code is ErrorCode.FORBIDDEN
            assert not log.of_type("started")
            assert isolated.output_keys(request.job_id) == []
            assert await isolated_probe.dead_letter(request.job_id) is not None
        # A task put straight on the queue by a broker user, without the worker's HMAC, is dead-lettered unsent.
        await _publish_task(settings, url=receiver.url(), signature="0" * 64, message_id="forged-task")
        assert await isolated_probe.dead_letter("forged-task") is not None, isolated.logs()

    assert receiver.received == []
    assert await _webhook_queue_depth(isolated.settings) == 0


async def test_the_standalone_relay_delivers_for_workers_without_one(
    isolated: IsolatedStack, isolated_client: SdqueueClient
):
    port = free_port()
    settings = _with_webhooks(isolated, f"127.0.0.1:{port}", relay=False)
    async with receiving(port) as receiver:
        isolated.start_worker("relayless", settings)
        await isolated_client.wait_for_workers("default", timeout_s=READY_TIMEOUT_S)
        request = txt2img(callback_url=receiver.url())
        await isolated_client.submit(request)
        event = await isolated_client.wait(request.job_id, timeout_s=JOB_TIMEOUT_S)
        await asyncio.sleep(0.5)
        assert receiver.received == []
        assert await _webhook_queue_depth(settings) == 1

        relay_log = isolated.log_dir / "relay.log"
        with relay_log.open("wb") as output:
            relay = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                f"{BLOCK_HEAVY}from sdqueue.cli import main\n{RUN_RELAY}",
                env=worker_environment(settings),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                arrived = await receiver.wait_for(1, timeout_s=60)
            finally:
                relay.send_signal(signal.SIGTERM)
                async with asyncio.timeout(15):
                    code = await relay.wait()

    assert code == 0, relay_log.read_text(errors="replace")
    assert len(arrived) == 1, relay_log.read_text(errors="replace")
    assert verify_webhook(arrived[0].body, arrived[0].headers, secret=_secret(settings)) == event
    assert await _webhook_queue_depth(settings) == 0
