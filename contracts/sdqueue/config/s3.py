"""Turn S3 settings into a boto3 client; the one place every process builds its S3 client."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import boto3
from botocore.config import Config

from sdqueue.config.settings import S3Settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


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


def object_url(client: S3Client, *, s3: S3Settings, key: str) -> str:
    """A URL for `key`: the public base URL plus the key when configured, else a GET URL presigned now.

    Raises:
        botocore.exceptions.BotoCoreError: the client cannot sign (no credentials).
    """
    if s3.public_base_url:
        return f"{s3.public_base_url.rstrip('/')}/{quote(key, safe='/')}"
    return client.generate_presigned_url("get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=s3.url_ttl_s)
