"""Fixtures for the real services: a SeaweedFS S3 server with keys enforced, and a RabbitMQ vhost per session.

A missing service fails the run under `CI=true` and skips the tests that need it otherwise.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest
from pydantic import SecretStr

from sdqueue.config.settings import S3Settings
from sdqueue.devstack import (
    DevstackError,
    SeaweedServer,
    broker_is_up,
    create_vhost,
    delete_vhost,
    ensure_rabbitmq,
    find_weed_binary,
    start_seaweed,
)
from sdqueue.devstack.rabbit import DEFAULT_BROKER_URL
from sdqueue.storage import make_s3_client

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

TEST_BUCKET = "sdqueue-test"


@dataclass(frozen=True)
class SeaweedStack:
    """A running SeaweedFS and the S3 settings that reach it."""

    server: SeaweedServer
    s3: S3Settings


def service_missing(reason: str) -> NoReturn:
    """Fail under CI=true, skip otherwise (STYLE section 7)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def random_keys() -> tuple[str, str]:
    """Return a fresh access key id and secret key."""
    return f"sdqtest{secrets.token_hex(6)}", secrets.token_urlsafe(30)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedStack]:
    """A SeaweedFS server for the whole session, with random keys and the bucket `sdqueue-test`."""
    try:
        find_weed_binary()
    except DevstackError as exc:
        service_missing(str(exc))
    access_key_id, secret_access_key = random_keys()
    server = start_seaweed(
        tmp_path_factory.mktemp("seaweed"),
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        bucket=TEST_BUCKET,
    )
    s3 = S3Settings(
        endpoint_url=server.endpoint_url,
        bucket=TEST_BUCKET,
        access_key_id=access_key_id,
        secret_access_key=SecretStr(secret_access_key),
    )
    with server:
        yield SeaweedStack(server=server, s3=s3)


@pytest.fixture(scope="session")
def s3_client(seaweed: SeaweedStack) -> S3Client:
    """A boto3 client for the session's SeaweedFS, built the way every sdqueue process builds one."""
    return make_s3_client(seaweed.s3)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The AMQP URL of a fresh vhost on the local RabbitMQ, deleted at the end of the session."""
    if not broker_is_up(DEFAULT_BROKER_URL):
        if os.environ.get("CI") != "true":
            pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672 (start it: rabbitmq-server -detached)")
        try:
            ensure_rabbitmq(DEFAULT_BROKER_URL)
        except DevstackError as exc:
            service_missing(str(exc))
    vhost = f"sdqueue-test-{secrets.token_hex(4)}"
    try:
        url = create_vhost(vhost)
    except DevstackError as exc:
        service_missing(f"cannot create a RabbitMQ vhost: {exc}")
    yield url
    delete_vhost(vhost)
