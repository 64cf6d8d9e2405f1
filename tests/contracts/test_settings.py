"""Settings: read from `SDQUEUE_*` once, nested with `__`, secrets hidden, unknown names reported."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdqueue.config import AuthSettings, BridgeSettings, Settings, child_environment, load_settings
from sdqueue.config.settings import unknown_variables

SECRET = "s3cr3t-value-that-is-long-enough-for-hs256"
BROKER_PASSWORD = "broker-pw-xyz"
S3_SECRET = "s3-secret-key-abc"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test without any `SDQUEUE_*` variable from the surrounding shell."""
    for name in list(os.environ):
        if name.upper().startswith("SDQUEUE_"):
            monkeypatch.delenv(name)


def test_defaults_need_no_environment():
    settings = Settings()

    assert settings.broker.prefetch > settings.fairness.max_per_caller  # fair intake works out of the box
    assert settings.s3.bucket == "sdqueue"
    assert settings.auth.issuers == ("sdqueue",)
    assert settings.auth.algorithms == ("HS256",)
    assert settings.worker_name


def test_a_child_environment_rebuilds_exactly_the_given_settings(monkeypatch: pytest.MonkeyPatch):
    settings = Settings(bridge=BridgeSettings(processes=3))
    base = {"PATH": "/usr/bin", "SDQUEUE_BRIDGE__PROCESSES": "1", "sdqueue_model": "stale"}

    environment = child_environment(settings, base=base)

    assert environment["PATH"] == "/usr/bin"
    assert "sdqueue_model" not in environment
    for key in [key for key in os.environ if key.upper().startswith("SDQUEUE_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert rebuilt.model_copy(update={"worker_name": settings.worker_name}) == settings  # each child names itself
    assert rebuilt.bridge.processes == 3  # the base's stale 1 is gone


def test_nested_group_fields_use_double_underscore(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_S3__BUCKET", "images")
    monkeypatch.setenv("SDQUEUE_S3__ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("SDQUEUE_BROKER__PREFETCH", "4")
    monkeypatch.setenv("SDQUEUE_SHUTDOWN_GRACE_S", "5.5")

    settings = Settings()

    assert settings.s3.bucket == "images"
    assert settings.s3.endpoint_url == "http://127.0.0.1:8333"
    assert settings.broker.prefetch == 4
    assert settings.shutdown_grace_s == 5.5


def test_tuples_are_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_AUTH__ISSUERS", '["issuer-a", "issuer-b"]')
    monkeypatch.setenv("SDQUEUE_AUTH__ALGORITHMS", '["EdDSA", "RS256"]')
    monkeypatch.setenv("SDQUEUE_AUTH__ISSUER_KEYS", '{"issuer-b": {"jwks_file": "/keys/b.json"}}')

    auth = Settings().auth

    assert auth.issuers == ("issuer-a", "issuer-b")
    assert auth.algorithms == ("EdDSA", "RS256")
    assert auth.issuer_key_settings()["issuer-b"].jwks_file == Path("/keys/b.json")


def test_an_issuer_without_keys_of_its_own_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_AUTH__ISSUERS", '["issuer-a", "issuer-b"]')

    with pytest.raises(ValidationError, match="issuer_keys"):
        Settings()


def test_disallowed_algorithm_is_rejected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_AUTH__ALGORITHMS", '["none"]')

    with pytest.raises(ValidationError):
        Settings()


def test_model_sources_default_to_the_tiny_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("SDQUEUE_STATE_DIR", str(tmp_path))

    assert Settings().model_sources() == {"default": str(tmp_path / "models" / "tiny")}


def test_model_sets_the_default_alias(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_MODEL", "org/some-model")

    assert Settings().model_sources() == {"default": "org/some-model"}


def test_models_add_aliases_one_variable_each(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_MODELS__fast", "/models/fast")
    monkeypatch.setenv("SDQUEUE_MODELS__slow", "org/slow")

    assert Settings().model_sources() == {"fast": "/models/fast", "slow": "org/slow"}


def test_models_as_one_json_object_with_a_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_MODELS", '{"fast": "/models/fast"}')
    monkeypatch.setenv("SDQUEUE_MODEL", "/models/main")

    assert Settings().model_sources() == {"fast": "/models/fast", "default": "/models/main"}


def test_models_alias_must_match_the_alias_pattern(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_MODELS", '{"bad alias": "/x"}')

    with pytest.raises(ValidationError):
        Settings()


def test_repr_never_shows_secrets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_AUTH__HS256_SECRET", SECRET)
    monkeypatch.setenv("SDQUEUE_BROKER__URL", f"amqp://user:{BROKER_PASSWORD}@127.0.0.1:5672/")
    monkeypatch.setenv("SDQUEUE_S3__SECRET_ACCESS_KEY", S3_SECRET)

    settings = Settings()
    shown = f"{settings!r} {settings} {settings.model_dump()}"

    for secret in (SECRET, BROKER_PASSWORD, S3_SECRET, "guest:guest"):
        assert secret not in shown
    assert settings.auth.hs256_secret is not None
    assert settings.auth.hs256_secret.get_secret_value() == SECRET


def test_default_broker_url_is_secret_too():
    # `broker.worker_users` names the user `guest` (a name, not a secret); the URL's password must not show.
    assert "guest:guest" not in repr(Settings())
    assert "amqp://" not in repr(Settings())


def test_short_hs256_secret_is_rejected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDQUEUE_AUTH__HS256_SECRET", "x" * 31)

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert caught.value.errors()[0]["loc"] == ("auth", "hs256_secret")


def test_32_byte_hs256_secret_is_accepted():
    assert AuthSettings.model_validate({"hs256_secret": "x" * 32}).hs256_secret is not None


@pytest.mark.parametrize(
    ("name", "is_unknown"),
    [
        ("SDQUEUE_NOPE", True),
        ("SDQUEUE_S3__BUKET", True),
        ("SDQUEUE_STATE_DIR__X", True),
        ("SDQUEUE_S3__BUCKET", False),
        ("sdqueue_s3__bucket", False),
        ("SDQUEUE_MODELS__fast", False),
        ("SDQUEUE_MODEL", False),
        ("SDQUEUE_LIMITS", False),
        ("OTHER_NOPE", False),
    ],
)
def test_unknown_variables(name: str, is_unknown: bool):
    assert unknown_variables({name: "1"}) == ([name] if is_unknown else [])


def test_load_settings_warns_about_unknown_variables(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setenv("SDQUEUE_NOPE", "1")
    monkeypatch.setenv("SDQUEUE_S3__BUCKET", "images")
    monkeypatch.setenv("SDQUEUE_MODELS__fast", "/models/fast")

    with caplog.at_level(logging.WARNING, logger="sdqueue.config.settings"):
        settings = load_settings()

    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "SDQUEUE_NOPE" in warned
    assert "SDQUEUE_S3__BUCKET" not in warned
    assert "SDQUEUE_MODELS__fast" not in warned
    assert settings.s3.bucket == "images"


def test_load_settings_is_quiet_with_only_valid_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("SDQUEUE_S3__BUCKET", "images")
    monkeypatch.setenv("SDQUEUE_AUTH__ISSUERS", '["a"]')

    with caplog.at_level(logging.WARNING):
        load_settings()

    assert caplog.records == []


def test_settings_and_groups_are_frozen():
    settings = Settings()

    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.s3.bucket = "other"  # type: ignore[misc]
