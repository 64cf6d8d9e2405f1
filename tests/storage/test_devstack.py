"""The development services: broker probe, vhosts, and SeaweedFS servers side by side."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import aio_pika
import pytest
from aio_pika.exceptions import AMQPError
from pydantic import SecretStr

from sdqueue.config.settings import S3Settings
from sdqueue.devstack import SeaweedServer, broker_is_up, create_vhost, delete_vhost, start_seaweed
from sdqueue.storage import make_s3_client, object_exists, put_object
from tests.plugins.services import SeaweedStack, random_keys


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_second(data_dir: Path, *, bucket: str) -> tuple[SeaweedServer, S3Settings]:
    access_key_id, secret_access_key = random_keys()
    server = start_seaweed(data_dir, access_key_id=access_key_id, secret_access_key=secret_access_key, bucket=bucket)
    s3 = S3Settings(
        endpoint_url=server.endpoint_url,
        bucket=bucket,
        access_key_id=access_key_id,
        secret_access_key=SecretStr(secret_access_key),
    )
    return server, s3


def test_broker_is_up_answers_for_rabbitmq(amqp_url: str) -> None:
    assert broker_is_up(amqp_url)


def test_broker_is_up_is_false_for_a_closed_port() -> None:
    assert not broker_is_up(f"amqp://guest:guest@127.0.0.1:{closed_port()}/", timeout_s=1)


def test_broker_is_up_is_false_for_a_server_that_is_not_amqp(seaweed: SeaweedStack) -> None:
    port = seaweed.server.ports["s3"]

    assert not broker_is_up(f"amqp://127.0.0.1:{port}/", timeout_s=0.5)


async def test_vhost_round_trip(amqp_url: str) -> None:
    name = f"sdqueue-test-{secrets.token_hex(4)}"

    url = create_vhost(name)
    try:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("probe", exclusive=True)
            assert queue.name == "probe"
    finally:
        delete_vhost(name)

    # RabbitMQ answers Connection.Open for a missing vhost with Connection.Close (530 NOT_ALLOWED).
    with pytest.raises(AMQPError):
        await aio_pika.connect(url, timeout=5)


async def test_two_servers_run_side_by_side(seaweed: SeaweedStack, tmp_path: Path) -> None:
    first = make_s3_client(seaweed.s3)
    server, s3 = start_second(tmp_path, bucket=seaweed.s3.bucket)
    with server:
        second = make_s3_client(s3)
        key = f"tests/{secrets.token_hex(6)}/only-in-second"

        await put_object(second, bucket=s3.bucket, key=key, data=b"x", content_type="text/plain")

        assert server.endpoint_url != seaweed.server.endpoint_url
        assert set(server.ports.values()).isdisjoint(seaweed.server.ports.values())
        assert await object_exists(second, bucket=s3.bucket, key=key)
        assert not await object_exists(first, bucket=s3.bucket, key=key)


@pytest.mark.services  # starts a SeaweedFS of its own
def test_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    server, _ = start_second(tmp_path, bucket="sdqueue-stop")
    pid = server.process.pid

    server.stop()
    server.stop()

    assert server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
