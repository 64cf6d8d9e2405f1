"""The S3 stage against a real SeaweedFS with access keys enforced."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from sdqueue import storage
from sdqueue.contracts.errors import StorageError, StorageRefused
from sdqueue.devstack import start_seaweed
from sdqueue.storage import (
    StoredBytes,
    check_bucket,
    delete_object,
    make_s3_client,
    object_exists,
    object_url,
    put_object,
    put_object_if_absent,
    read_object,
)
from tests.plugins.services import SeaweedStack, random_keys

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


def unique_key(name: str) -> str:
    return f"tests/{secrets.token_hex(6)}/{name}"


async def test_put_then_read_round_trip(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("0.png")
    data = secrets.token_bytes(5000)

    await put_object(
        s3_client, bucket=seaweed.s3.bucket, key=key, data=data, content_type="image/png", metadata={"seed": "42"}
    )

    stored = await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=10_000)
    assert stored == StoredBytes(data=data, metadata={"seed": "42"}, content_type="image/png")
    assert await object_exists(s3_client, bucket=seaweed.s3.bucket, key=key)


async def test_missing_key_reads_as_none(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("absent.png")

    assert await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=100) is None
    assert not await object_exists(s3_client, bucket=seaweed.s3.bucket, key=key)


async def test_delete_removes_the_object_and_tolerates_its_absence(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("init.png")
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=b"png", content_type="image/png")

    await delete_object(s3_client, bucket=seaweed.s3.bucket, key=key)
    await delete_object(s3_client, bucket=seaweed.s3.bucket, key=key)

    assert not await object_exists(s3_client, bucket=seaweed.s3.bucket, key=key)


async def test_read_stops_one_byte_past_max_bytes(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("big.bin")
    data = secrets.token_bytes(100_000)
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=data, content_type="application/octet-stream")

    cut = await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=1000)
    whole = await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=len(data))

    assert cut is not None
    assert cut.data == data[:1001]
    assert whole is not None
    assert whole.data == data


async def test_empty_object_reads_as_empty(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("empty.bin")
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=b"", content_type="text/plain")

    stored = await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=10)

    assert stored == StoredBytes(data=b"", metadata={}, content_type="text/plain")


async def test_put_if_absent_creates_once_and_keeps_the_original(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("record.json")
    bucket = seaweed.s3.bucket

    first = await put_object_if_absent(s3_client, bucket=bucket, key=key, data=b"first", content_type="text/plain")
    second = await put_object_if_absent(s3_client, bucket=bucket, key=key, data=b"second", content_type="text/plain")

    assert (first, second) == (True, False)
    stored = await read_object(s3_client, bucket=bucket, key=key, max_bytes=100)
    assert stored is not None
    assert stored.data == b"first"


async def test_presigned_url_serves_the_object_and_refuses_tampering(
    seaweed: SeaweedStack, s3_client: S3Client
) -> None:
    key = unique_key("0.webp")
    data = secrets.token_bytes(2000)
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=data, content_type="image/webp")

    url = object_url(s3_client, s3=seaweed.s3, key=key)

    async with httpx.AsyncClient(timeout=5) as http:
        good = await http.get(url)
        tampered = await http.get(flip_signature(url))
    assert (good.status_code, good.content) == (200, data)
    assert tampered.status_code == 403


def flip_signature(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_anonymous_get_is_refused(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("private.png")
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=b"secret", content_type="image/png")

    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{seaweed.server.endpoint_url}/{seaweed.s3.bucket}/{key}")

    assert response.status_code == 403
    assert b"secret" not in response.content


async def test_wrong_secret_key_is_refused(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    key = unique_key("0.png")
    await put_object(s3_client, bucket=seaweed.s3.bucket, key=key, data=b"kept", content_type="image/png")
    intruder = make_s3_client(
        seaweed.s3.model_copy(update={"secret_access_key": SecretStr("not-the-secret"), "max_attempts": 1})
    )

    with pytest.raises(StorageError, match=r"^storage refused the write"):
        await put_object(intruder, bucket=seaweed.s3.bucket, key=key, data=b"evil", content_type="image/png")
    with pytest.raises(StorageError, match=r"^storage refused the read"):
        await read_object(intruder, bucket=seaweed.s3.bucket, key=key, max_bytes=100)

    stored = await read_object(s3_client, bucket=seaweed.s3.bucket, key=key, max_bytes=100)
    assert stored is not None
    assert stored.data == b"kept"


def test_public_base_url_replaces_presigning(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    s3 = seaweed.s3.model_copy(update={"public_base_url": "https://cdn.example.com/images/"})

    url = object_url(s3_client, s3=s3, key="outputs/job-1/0.png")

    assert url == "https://cdn.example.com/images/outputs/job-1/0.png"


async def test_check_bucket_passes_for_the_bucket(seaweed: SeaweedStack, s3_client: S3Client) -> None:
    await check_bucket(s3_client, bucket=seaweed.s3.bucket)


async def test_check_bucket_reports_a_missing_bucket(s3_client: S3Client) -> None:
    with pytest.raises(StorageError, match="bucket not found"):
        await check_bucket(s3_client, bucket="sdqueue-no-such-bucket")


async def test_check_bucket_fails_fast_when_storage_is_down(seaweed: SeaweedStack, tmp_path: Path) -> None:
    access_key_id, secret_access_key = random_keys()
    with start_seaweed(
        tmp_path, access_key_id=access_key_id, secret_access_key=secret_access_key, bucket="sdqueue-gone"
    ) as server:
        s3 = seaweed.s3.model_copy(
            update={
                "endpoint_url": server.endpoint_url,
                "bucket": "sdqueue-gone",
                "access_key_id": access_key_id,
                "secret_access_key": SecretStr(secret_access_key),
                "timeout_s": 1.0,
                "max_attempts": 1,
            }
        )
    client = make_s3_client(s3)
    started = time.monotonic()

    with pytest.raises(StorageError, match=r"^storage unavailable") as caught:
        await check_bucket(client, bucket=s3.bucket)

    assert time.monotonic() - started < 3
    assert "127.0.0.1" not in str(caught.value)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("status", "code", "is_refused"),
    [
        (403, "AccessDenied", True),
        (400, "InvalidArgument", True),
        (400, "RequestTimeout", False),
        (429, "TooManyRequests", False),
        (503, "SlowDown", False),
        (500, "InternalError", False),
    ],
)
def test_a_4xx_other_than_throttling_is_a_refusal_not_an_outage(status: int, code: str, is_refused: bool):
    answer = ClientError(
        {
            "Error": {"Code": code},
            "ResponseMetadata": {
                "RequestId": "",
                "HostId": "",
                "HTTPStatusCode": status,
                "HTTPHeaders": {},
                "RetryAttempts": 0,
            },
        },
        "GetObject",
    )

    with pytest.raises(StorageError) as caught, storage._translated("read"):
        raise answer

    assert isinstance(caught.value, StorageRefused) is is_refused
    assert caught.value.retryable is True  # only the init-image stage turns a refusal into `invalid_image`
