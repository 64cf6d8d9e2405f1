"""The client's view of the bucket: upload init images and masks, read result records, download images by URL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

import httpx
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError
from pydantic import ValidationError

from sdqueue.client.errors import StorageUnavailable
from sdqueue.config import S3Settings
from sdqueue.contracts import ImageInfo, InitImageKey, TerminalEvent, parse_terminal_event
from sdqueue.contracts.topology import input_key, mask_key, record_key

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
INIT_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


async def upload_init_image(
    client: S3Client, *, s3: S3Settings, job_id: str, data: bytes, extension: str
) -> InitImageKey:
    """Put an img2img or inpaint init image at `inputs/<job_id>/init.<ext>` and return the reference a request carries.

    Raises:
        StorageUnavailable: the upload failed.
    """
    return await _upload_input(client, s3=s3, key=input_key(job_id, extension), data=data, what="init image")


async def upload_mask_image(
    client: S3Client, *, s3: S3Settings, job_id: str, data: bytes, extension: str
) -> InitImageKey:
    """Put an inpaint mask at `inputs/<job_id>/mask.<ext>` and return the reference a request carries.

    Raises:
        StorageUnavailable: the upload failed.
    """
    return await _upload_input(client, s3=s3, key=mask_key(job_id, extension), data=data, what="mask image")


async def _upload_input(client: S3Client, *, s3: S3Settings, key: str, data: bytes, what: str) -> InitImageKey:
    content_type = INIT_CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    try:
        await asyncio.to_thread(client.put_object, Bucket=s3.bucket, Key=key, Body=data, ContentType=content_type)
    except (BotoCoreError, BotoClientError) as exc:
        raise StorageUnavailable(f"could not upload the {what}") from exc
    return InitImageKey(key=key)


async def delete_init_image(client: S3Client, *, s3: S3Settings, reference: InitImageKey) -> None:
    """Remove an init image whose job was never queued; a failure is logged, not raised (it is only litter)."""
    try:
        await asyncio.to_thread(client.delete_object, Bucket=s3.bucket, Key=reference.key)
    except (BotoCoreError, BotoClientError):
        log.warning("could not remove the init image %s of a job that was not queued", reference.key)


async def read_record(client: S3Client, *, s3: S3Settings, job_id: str) -> TerminalEvent | None:
    """Return the job's result record (its terminal event), or None while it has none that holds.

    A record that is too large, not a terminal event or about another job is ignored, as if absent (logged).

    Raises:
        StorageUnavailable: the bucket could not be read.
    """
    try:
        response = await asyncio.to_thread(client.get_object, Bucket=s3.bucket, Key=record_key(job_id))
        body = await asyncio.to_thread(response["Body"].read, MAX_RECORD_BYTES + 1)
    except BotoClientError as exc:
        if exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
            return None
        raise StorageUnavailable("could not read the job's record") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable("could not read the job's record") from exc
    return _valid_record(body, job_id=job_id)


def _valid_record(body: bytes, *, job_id: str) -> TerminalEvent | None:
    try:
        record = parse_terminal_event(body) if len(body) <= MAX_RECORD_BYTES else None
    except ValidationError:
        record = None
    if record is None or record.job_id != job_id:
        log.warning("job %s: ignoring a result record that does not hold", job_id)
        return None
    return record


async def fetch_image(http: httpx.AsyncClient, image: ImageInfo) -> bytes:
    """Download one image from its event URL and check it against the event's sha256.

    Raises:
        StorageUnavailable: the download failed or the bytes do not match.
    """
    try:
        response = await http.get(image.url)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise StorageUnavailable(f"could not download {image.key}") from exc
    if hashlib.sha256(response.content).hexdigest() != image.sha256:
        raise StorageUnavailable(f"downloaded {image.key} does not match its sha256")
    return response.content


async def ensure_bucket(client: S3Client, *, s3: S3Settings) -> bool:
    """Create the configured bucket unless it exists; True if it was created (for deployments and compose).

    Raises:
        StorageUnavailable: the bucket could not be checked or created.
    """
    try:
        await asyncio.to_thread(client.head_bucket, Bucket=s3.bucket)
        return False
    except BotoClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in NOT_FOUND_CODES | {"NoSuchBucket"}:
            raise StorageUnavailable("could not check the bucket") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable("could not check the bucket") from exc
    try:
        if s3.region == "us-east-1":
            await asyncio.to_thread(client.create_bucket, Bucket=s3.bucket)
        else:
            location = {"LocationConstraint": s3.region}
            await asyncio.to_thread(client.create_bucket, Bucket=s3.bucket, CreateBucketConfiguration=location)  # type: ignore[arg-type]
    except (BotoCoreError, BotoClientError) as exc:
        raise StorageUnavailable("could not create the bucket") from exc
    return True
