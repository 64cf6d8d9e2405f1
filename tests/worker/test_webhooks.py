"""Webhook targets and delivery without a broker: the allow-list, the address guard, signing and retries over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from itertools import pairwise
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sdqueue.client import verify_webhook
from sdqueue.config import WebhookSettings
from sdqueue.contracts import ErrorCode, ErrorInfo, FailedEvent
from sdqueue.contracts.errors import Forbidden
from sdqueue.contracts.webhooks import webhook_event_id
from sdqueue.worker.webhooks import (
    USER_AGENT,
    WebhookOutcome,
    WebhookTask,
    backoff_s,
    check_callback_url,
    deliver_webhook,
    is_public_address,
    resolve_target,
)
from tests.plugins.isolated import free_port
from tests.plugins.webhook_receiver import receiving

SECRET = "webhook-secret-that-is-long-enough-0123456789"
BODY = (
    FailedEvent(
        job_id="job-1",
        model="default",
        worker="w",
        attempt=1,
        error=ErrorInfo(code=ErrorCode.FORBIDDEN, message="nope", retryable=False),
    )
    .model_dump_json()
    .encode()
)


def _webhooks(*allowed: str, **overrides: Any) -> WebhookSettings:
    fields: dict[str, Any] = {
        "secret": SecretStr(SECRET),
        "allowed_hosts": allowed,
        "backoff_s": 0.05,
        "max_backoff_s": 0.2,
        "timeout_s": 2.0,
        **overrides,
    }
    return WebhookSettings.model_validate(fields)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x", "hooks.example.com"),
        ("https://hooks.example.com:443/x", "hooks.example.com"),
        ("http://hooks.example.com/x", "hooks.example.com"),
        ("https://HOOKS.example.com/x", "hooks.example.com"),
        ("https://hooks.example.com:8443/x", "hooks.example.com:8443"),
        ("https://hooks.example.com/x", "hooks.example.com:443"),
        ("http://127.0.0.1:9000/x", "127.0.0.1:9000"),
        ("http://[::1]:9000/x", "[::1]:9000"),
        ("https://bücher.example/x", "xn--bcher-kva.example"),
    ],
)
def test_allowed_callbacks_pass(url: str, allowed: str):
    assert check_callback_url(url, webhooks=_webhooks(allowed)) == url


@pytest.mark.parametrize(
    ("url", "allowed", "reason"),
    [
        ("https://evil.example.com/x", "hooks.example.com", "allow-list"),
        ("https://hooks.example.com:8443/x", "hooks.example.com", "allow-list"),
        ("http://127.0.0.1:9001/x", "127.0.0.1:9000", "allow-list"),
        ("http://169.254.169.254/latest/meta-data/", "hooks.example.com", "allow-list"),
        ("https://hooks.example.com.evil.example/x", "hooks.example.com", "allow-list"),
        ("https://user:pw@hooks.example.com/x", "hooks.example.com", "credentials"),
        ("https://hooks.example.com\\@evil.example/x", "hooks.example.com", "credentials"),
        ("ftp://hooks.example.com/x", "hooks.example.com", "http or https"),
        ("http://2130706433:9000/", "127.0.0.1:9000", "allow-list"),
    ],
)
def test_other_callbacks_are_forbidden(url: str, allowed: str, reason: str):
    with pytest.raises(Forbidden, match=reason):
        check_callback_url(url, webhooks=_webhooks(allowed))


def test_no_callback_is_fine_with_callbacks_off():
    assert check_callback_url(None, webhooks=WebhookSettings()) is None


def test_every_callback_is_forbidden_with_an_empty_allow_list():
    with pytest.raises(Forbidden, match="not enabled"):
        check_callback_url("https://hooks.example.com/", webhooks=WebhookSettings(secret=SecretStr(SECRET)))


@pytest.mark.parametrize(
    ("address", "is_public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.1.2.3", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_public_addresses(address: str, is_public: bool):
    assert is_public_address(ipaddress.ip_address(address)) is is_public


async def test_an_ip_literal_on_the_allow_list_is_called_as_is():
    target = await resolve_target("http://127.0.0.1:9000/x?y=1", webhooks=_webhooks("127.0.0.1:9000"))

    assert str(target.url) == "http://127.0.0.1:9000/x?y=1"
    assert target.host_header == "127.0.0.1:9000"


async def test_a_name_resolving_to_loopback_is_refused_at_send_time():
    with pytest.raises(Forbidden, match="resolves to a private"):
        await resolve_target("http://localhost:9000/x", webhooks=_webhooks("localhost:9000"))


async def test_private_names_may_be_allowed_and_are_pinned_to_the_address_checked():
    webhooks = _webhooks("localhost:9000", allow_private_networks=True)

    target = await resolve_target("https://localhost:9000/x", webhooks=webhooks)

    assert target.url.host in {"127.0.0.1", "::1"}
    assert target.url.path == "/x"
    assert target.host_header == "localhost:9000"
    assert target.sni_hostname == "localhost"


def test_backoff_doubles_and_is_capped():
    webhooks = _webhooks("h", backoff_s=1.0, max_backoff_s=5.0)

    assert [backoff_s(attempt, webhooks=webhooks) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


async def _deliver(url: str, webhooks: WebhookSettings, outcomes: list[WebhookOutcome]) -> bool:
    async with httpx.AsyncClient(trust_env=False) as http:
        task = WebhookTask(body=BODY, url=url, event_id=webhook_event_id(BODY), job_id="job-1")
        return await deliver_webhook(task, secret=SECRET, http=http, webhooks=webhooks, on_outcome=outcomes.append)


async def test_a_webhook_is_signed_and_retried_until_accepted():
    port = free_port()
    outcomes: list[WebhookOutcome] = []
    async with receiving(port, statuses=[503, 500]) as receiver:
        delivered = await _deliver(receiver.url("/in?tenant=7"), _webhooks(f"127.0.0.1:{port}"), outcomes)

    assert delivered is True
    assert [item.status for item in receiver.received] == [503, 500, 200]
    assert outcomes == ["retry", "retry"]
    gaps = [later.at_monotonic - earlier.at_monotonic for earlier, later in pairwise(receiver.received)]
    assert gaps[0] >= 0.05
    assert gaps[1] >= 0.1
    for item in receiver.received:
        assert (item.method, item.target, item.body) == ("POST", "/in?tenant=7", BODY)
        assert item.header("Content-Type") == "application/json"
        assert item.header("User-Agent") == USER_AGENT
        assert item.header("Host") == f"127.0.0.1:{port}"
        assert item.header("Sdqueue-Event-Id") == webhook_event_id(BODY)
        timestamp = item.header("Sdqueue-Timestamp")
        digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + BODY, hashlib.sha256).hexdigest()
        assert item.header("Sdqueue-Signature") == f"v1={digest}"
        assert verify_webhook(item.body, item.headers, secret=SECRET).job_id == "job-1"


@pytest.mark.parametrize("status", [302, 400, 404, 500])
async def test_a_webhook_not_accepted_within_max_attempts_is_given_up(status: int):
    port = free_port()
    outcomes: list[WebhookOutcome] = []
    async with receiving(port, statuses=[status] * 5) as receiver:
        delivered = await _deliver(receiver.url(), _webhooks(f"127.0.0.1:{port}", max_attempts=3), outcomes)

    assert delivered is False
    assert len(receiver.received) == 3
    assert outcomes == ["retry", "retry"]


async def test_a_receiver_that_is_down_is_retried_then_given_up():
    port = free_port()
    outcomes: list[WebhookOutcome] = []

    delivered = await _deliver(f"http://127.0.0.1:{port}/", _webhooks(f"127.0.0.1:{port}", max_attempts=2), outcomes)

    assert delivered is False
    assert outcomes == ["retry"]


async def test_a_target_off_the_allow_list_is_never_called():
    port = free_port()
    async with receiving(port) as receiver:
        with pytest.raises(Forbidden):
            await _deliver(receiver.url(), _webhooks("127.0.0.1:1"), [])

    assert receiver.received == []
