"""`sdqueue storage ensure-bucket` creates the configured bucket once, on the real SeaweedFS."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sdqueue.storage import ensure_bucket
from tests.plugins.services import SeaweedStack

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


async def test_ensure_bucket_creates_once(seaweed: SeaweedStack, s3_client: S3Client):
    s3 = seaweed.s3.model_copy(update={"bucket": f"ensure-{secrets.token_hex(4)}"})

    created = await ensure_bucket(s3_client, s3=s3)
    again = await ensure_bucket(s3_client, s3=s3)

    assert (created, again) == (True, False)
    assert s3.bucket in {bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]}
