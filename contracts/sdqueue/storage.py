"""The one S3 helper of the worker, the client, the bridge and the dev stack: build the client, put, conditionally
create, read, delete and locate objects, check or create the bucket, with boto3 running off the event loop.

Every botocore, boto3 and urllib3 error is translated here into `StorageError` (`StorageRefused` for a request the
bucket will refuse again) with a message safe to show the requester (no host, key or bucket names); the original
stays attached as `__cause__` for the logs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from sdqueue.config.settings import S3Settings
from sdqueue.contracts.errors import StorageError, StorageRefused

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import PutObjectRequestTypeDef

log = logging.getLogger(__name__)
T = TypeVar("T")
Metadata = Mapping[str, str]

_STORAGE_ERRORS = (BotoCoreError, ClientError, Boto3Error, Urllib3Error)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET_CODES = _NOT_FOUND_CODES | {"NoSuchBucket"}
_PRECONDITION_FAILED_CODES = frozenset({"412", "PreconditionFailed"})
_EMPTY_RANGE_CODES = frozenset({"416", "InvalidRange"})
_SAFE_ERROR_CODE = re.compile(r"^[A-Za-z0-9.]{1,64}$")
# 4xx answers that mean "not now" rather than "never": throttling and timeouts.
_THROTTLING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout"}
)
_NOT_NOW_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class StoredBytes:
    """An object's body (possibly cut at `max_bytes + 1`), user metadata and content type."""

    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def make_s3_client(s3: S3Settings) -> S3Client:
    """Return a thread-safe boto3 S3 client for the configured endpoint, keys and timeouts."""
    secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
    config = Config(
        connect_timeout=s3.timeout_s,
        read_timeout=s3.timeout_s,
        retries={"max_attempts": s3.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )


async def put_object(
    client: S3Client, *, bucket: str, key: str, data: bytes, content_type: str, metadata: Metadata | None = None
) -> None:
    """Store `data` under `key`, replacing any object there.

    Raises:
        StorageError: the endpoint refused, timed out or could not be reached.
    """
    request = _put_request(bucket=bucket, key=key, data=data, content_type=content_type, metadata=metadata)
    with _translated("write"):
        await asyncio.to_thread(lambda: client.put_object(**request))


async def put_object_if_absent(
    client: S3Client, *, bucket: str, key: str, data: bytes, content_type: str, metadata: Metadata | None = None
) -> bool:
    """Create `key` only if nothing is stored there (`If-None-Match: *`); return False if it already existed.

    The first writer wins: that is how claims and result records are written.

    Raises:
        StorageError: the endpoint refused, timed out or could not be reached.
    """
    request = _put_request(bucket=bucket, key=key, data=data, content_type=content_type, metadata=metadata)
    request["IfNoneMatch"] = "*"
    with _translated("write"):
        try:
            await asyncio.to_thread(lambda: client.put_object(**request))
        except ClientError as exc:
            if _error_code(exc) in _PRECONDITION_FAILED_CODES:
                return False
            raise
    return True


def _put_request(
    *, bucket: str, key: str, data: bytes, content_type: str, metadata: Metadata | None
) -> PutObjectRequestTypeDef:
    return {"Bucket": bucket, "Key": key, "Body": data, "ContentType": content_type, "Metadata": dict(metadata or {})}


async def read_object(client: S3Client, *, bucket: str, key: str, max_bytes: int) -> StoredBytes | None:
    """Return the object at `key` with at most `max_bytes + 1` bytes of its body, or None if there is none.

    A result longer than `max_bytes` means the object is too large; the rest is never downloaded.

    Raises:
        StorageError: the endpoint refused, timed out or could not be reached.
    """
    with _translated("read"):
        return await asyncio.to_thread(_read_object, client, bucket=bucket, key=key, max_bytes=max_bytes)


async def object_exists(client: S3Client, *, bucket: str, key: str) -> bool:
    """Return whether an object is stored at `key`.

    Raises:
        StorageError: the endpoint refused, timed out or could not be reached.
    """
    with _translated("lookup"):
        try:
            await asyncio.to_thread(client.head_object, Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
    return True


async def delete_object(client: S3Client, *, bucket: str, key: str) -> None:
    """Remove the object at `key`; removing one that is not there is no error.

    Raises:
        StorageError: the endpoint refused, timed out or could not be reached.
    """
    with _translated("delete"):
        await asyncio.to_thread(client.delete_object, Bucket=bucket, Key=key)


def object_url(client: S3Client, *, s3: S3Settings, key: str) -> str:
    """Return a URL for `key`: the public base URL plus the key when configured, else a GET URL presigned now.

    Raises:
        StorageError: the client cannot sign, for instance because it has no credentials.
    """
    if s3.public_base_url:
        return f"{s3.public_base_url.rstrip('/')}/{quote(key, safe='/')}"
    with _translated("signing"):
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=s3.url_ttl_s
        )


async def check_bucket(client: S3Client, *, bucket: str) -> None:
    """Return once the bucket answers; the readiness probe.

    Raises:
        StorageError: the endpoint is unreachable or refuses, or the bucket does not exist.
    """
    if not await _bucket_exists(client, bucket=bucket):
        raise StorageError("storage bucket not found")


async def ensure_bucket(client: S3Client, *, s3: S3Settings) -> bool:
    """Create the configured bucket unless it exists; True if it was created (for deployments and compose).

    Raises:
        StorageError: the bucket could not be checked or created.
    """
    if await _bucket_exists(client, bucket=s3.bucket):
        return False
    with _translated("bucket creation"):
        if s3.region == "us-east-1":
            await asyncio.to_thread(client.create_bucket, Bucket=s3.bucket)
        else:
            location = {"LocationConstraint": s3.region}
            await asyncio.to_thread(client.create_bucket, Bucket=s3.bucket, CreateBucketConfiguration=location)  # type: ignore[arg-type]
    return True


async def _bucket_exists(client: S3Client, *, bucket: str) -> bool:
    with _translated("bucket check"):
        try:
            await asyncio.to_thread(client.head_bucket, Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc) in _NO_BUCKET_CODES:
                return False
            raise
    return True


def _read_object(client: S3Client, *, bucket: str, key: str, max_bytes: int) -> StoredBytes | None:
    try:
        response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")
    except ClientError as exc:
        code = _error_code(exc)
        if code in _NOT_FOUND_CODES:
            return None
        if code not in _EMPTY_RANGE_CODES:
            raise
        # A range starting at byte 0 is unsatisfiable only for an empty object.
        response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        # Bounded even if the server ignored the Range header and sent the whole object.
        data = body.read(max_bytes + 1)
    finally:
        body.close()
    return StoredBytes(data=data, metadata=dict(response.get("Metadata", {})), content_type=response.get("ContentType"))


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    try:
        yield
    except _STORAGE_ERRORS as exc:
        if isinstance(exc, ClientError) and _is_refusal(exc):
            raise StorageRefused(_safe_message(operation, exc)) from exc
        raise StorageError(_safe_message(operation, exc)) from exc


def _is_refusal(exc: ClientError) -> bool:
    """A 4xx that is not throttling: the request itself is wrong, so retrying it cannot help."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return 400 <= status < 500 and status not in _NOT_NOW_STATUSES and _error_code(exc) not in _THROTTLING_CODES


def _safe_message(operation: str, exc: Exception) -> str:
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        # S3 error codes such as AccessDenied are safe; messages may carry names, so they are left out.
        suffix = f" ({code})" if _SAFE_ERROR_CODE.match(code) else ""
        return f"storage refused the {operation}{suffix}"
    return f"storage unavailable during {operation}"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def durable(operation: Callable[[], Awaitable[T]], *, what: str, budget_s: float) -> T:
    """Run a storage operation, waiting out an outage of up to `budget_s` in place so it burns no delivery; `what`
    names the operation's subject in the log (`job <id>`, `object <key>`).

    Raises:
        StorageError: storage stayed unavailable for the whole budget.
    """
    deadline = time.monotonic() + budget_s
    delay_s = 0.5
    while True:
        try:
            return await operation()
        except StorageError as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("%s: %s; retrying in %.1fs", what, exc.message, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
