"""Webhook signing and verification, the request's `callback_url` and the webhook settings, without a broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import pytest
from pydantic import SecretStr, ValidationError

from sdqueue.client import InvalidWebhook, verify_webhook
from sdqueue.config import Settings, WebhookSettings
from sdqueue.contracts import ErrorCode, ErrorInfo, FailedEvent, GenerationRequest
from sdqueue.contracts.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    webhook_event_id,
    webhook_signature,
)
from tests.plugins.webhook_receiver import documented_verify

SECRET = "webhook-secret-that-is-long-enough-0123456789"
NOW = 1_800_000_000


def _event_body() -> bytes:
    event = FailedEvent(
        job_id="job-1",
        model="default",
        worker="w",
        attempt=1,
        error=ErrorInfo(code=ErrorCode.FORBIDDEN, message="nope", retryable=False),
    )
    return event.model_dump_json().encode()


def _headers(body: bytes, *, timestamp: int = NOW, secret: str = SECRET) -> dict[str, str]:
    return {
        EVENT_ID_HEADER: webhook_event_id(body),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: webhook_signature(body, secret=secret, timestamp=timestamp),
    }


def test_signature_is_the_documented_recipe():
    body = _event_body()
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()

    assert webhook_signature(body, secret=SECRET, timestamp=NOW) == f"v1={expected}"


def test_the_recipe_in_the_contract_accepts_a_signed_webhook_and_refuses_a_forged_one():
    verify = documented_verify()
    body = _event_body()
    now = int(time.time())

    assert verify(body, _headers(body, timestamp=now), SECRET) is True
    assert verify(body + b" ", _headers(body, timestamp=now), SECRET) is False
    assert (
        verify(body, _headers(body, timestamp=now, secret="another-secret-that-is-long-enough-0000"), SECRET) is False
    )
    assert verify(body, _headers(body, timestamp=now - 301), SECRET) is False


def test_a_signed_webhook_verifies_with_headers_in_any_case():
    body = _event_body()
    headers = {name.lower(): value for name, value in _headers(body).items()}

    event = verify_webhook(body, headers, secret=SECRET, now=NOW + 10)

    assert isinstance(event, FailedEvent)
    assert event.job_id == "job-1"
    assert verify_webhook(body, _headers(body), secret=SECRET, now=NOW - 10) == event


def test_a_tampered_body_is_refused():
    body = _event_body()
    headers = _headers(body)
    tampered = body.replace(b'"nope"', b'"fine"')

    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(tampered, headers, secret=SECRET, now=NOW)


def test_a_signature_made_with_another_secret_is_refused():
    body = _event_body()
    forged = _headers(body, secret="an-attacker-secret-that-is-long-enough-000")

    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(body, forged, secret=SECRET, now=NOW)


def test_a_signature_moved_to_another_timestamp_is_refused():
    body = _event_body()
    headers = _headers(body)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)

    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(body, headers, secret=SECRET, now=NOW)


@pytest.mark.parametrize("skew_s", [301, -301, 86_400])
def test_a_timestamp_outside_the_window_is_refused(skew_s: int):
    body = _event_body()

    with pytest.raises(InvalidWebhook, match="away from now"):
        verify_webhook(body, _headers(body), secret=SECRET, now=NOW + skew_s)


def test_the_window_is_configurable():
    body = _event_body()

    assert verify_webhook(body, _headers(body), secret=SECRET, now=NOW + 500, tolerance_s=600)
    with pytest.raises(InvalidWebhook):
        verify_webhook(body, _headers(body), secret=SECRET, now=NOW + 20, tolerance_s=10)


@pytest.mark.parametrize("missing", [TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_a_missing_header_is_refused(missing: str):
    body = _event_body()
    headers = _headers(body)
    del headers[missing]

    with pytest.raises(InvalidWebhook, match="missing"):
        verify_webhook(body, headers, secret=SECRET, now=NOW)


@pytest.mark.parametrize("timestamp", ["-5", "1.5", "abc", "١٢٣"])
def test_a_malformed_timestamp_is_refused(timestamp: str):
    body = _event_body()
    headers = _headers(body) | {TIMESTAMP_HEADER: timestamp}

    with pytest.raises(InvalidWebhook, match="Unix time"):
        verify_webhook(body, headers, secret=SECRET, now=NOW)


def test_one_matching_signature_of_several_is_enough():
    body = _event_body()
    headers = _headers(body)
    old = webhook_signature(body, secret="the-previous-secret-also-long-enough-0000", timestamp=NOW)
    headers[SIGNATURE_HEADER] = f"{old}, {headers[SIGNATURE_HEADER]}"

    assert verify_webhook(body, headers, secret=SECRET, now=NOW)


def test_a_signature_without_its_version_is_refused():
    body = _event_body()
    headers = _headers(body)
    headers[SIGNATURE_HEADER] = headers[SIGNATURE_HEADER].removeprefix("v1=")

    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(body, headers, secret=SECRET, now=NOW)


def test_a_signed_body_that_is_not_an_event_is_refused():
    body = json.dumps({"hello": "world"}).encode()

    with pytest.raises(InvalidWebhook, match="terminal event"):
        verify_webhook(body, _headers(body), secret=SECRET, now=NOW)


def test_the_event_id_is_stable_per_body():
    body = _event_body()

    assert webhook_event_id(body) == webhook_event_id(bytes(body))
    assert webhook_event_id(body) != webhook_event_id(body + b" ")
    assert len(webhook_event_id(body)) == 32


def _request(**fields: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"schema_version": 1, "job_id": "j", "mode": "txt2img", "prompt": "p", **fields}
    )


@pytest.mark.parametrize(
    "url", ["http://hooks.example.com/x", "https://hooks.example.com:8443/a/b?c=d#e", "http://127.0.0.1:9/"]
)
def test_callback_url_accepts_http_and_https(url: str):
    assert _request(callback_url=url).callback_url == url


def test_callback_url_is_optional():
    assert _request().callback_url is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "hooks.example.com/x",
        "http:///x",
        "http://hooks.example.com/a b",
        "HTTP://hooks.example.com/",
        "http://h.example.com/" + "a" * 2048,
    ],
)
def test_callback_url_must_be_an_http_url_of_at_most_2048_characters(url: str):
    with pytest.raises(ValidationError):
        _request(callback_url=url)


def test_webhook_settings_default_to_refusing_every_callback():
    webhooks = Settings().webhooks

    assert webhooks.allowed_hosts == ()
    assert webhooks.secret is None
    assert webhooks.relay is True


def test_webhook_secret_must_be_32_bytes():
    with pytest.raises(ValidationError, match="32 bytes"):
        WebhookSettings(secret=SecretStr("x" * 31))


def test_allowed_hosts_need_a_secret():
    with pytest.raises(ValidationError, match="secret"):
        WebhookSettings(allowed_hosts=("hooks.example.com",))


@pytest.mark.parametrize("entry", ["https://hooks.example.com", "hooks.example.com/x", "::1", "user@host", ""])
def test_allowed_hosts_entries_are_host_or_host_port(entry: str):
    with pytest.raises(ValidationError, match="host"):
        WebhookSettings(secret=SecretStr(SECRET), allowed_hosts=(entry,))


def test_allowed_hosts_are_read_from_json_and_lower_cased(monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.upper().startswith("SDQUEUE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SDQUEUE_WEBHOOKS__SECRET", SECRET)
    monkeypatch.setenv("SDQUEUE_WEBHOOKS__ALLOWED_HOSTS", '["Hooks.Example.com", "127.0.0.1:8080", "[::1]:9000"]')

    webhooks = Settings().webhooks

    assert webhooks.allowed_hosts == ("hooks.example.com", "127.0.0.1:8080", "[::1]:9000")
    assert SECRET not in repr(webhooks)
