"""The client's view of the bucket: upload init images and masks, read result records, download images by URL."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from sdqueue import storage
from sdqueue.config import S3Settings
from sdqueue.contracts import ImageInfo, InitImageKey, TerminalEvent, parse_terminal_event
from sdqueue.contracts.adapters import content_addressed_key
from sdqueue.contracts.errors import StorageError, StorageUnavailable
from sdqueue.contracts.topology import input_key, mask_key, record_key

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
INIT_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


async def upload_init_image(
    client: S3Client, *, s3: S3Settings, job_id: str, data: bytes, extension: str
) -> InitImageKey:
    """Put an img2img or inpaint init image at `inputs/<job_id>/init.<ext>` and return the reference a request carries.

    Raises:
        StorageError: the upload failed.
    """
    return await _upload_input(client, s3=s3, key=input_key(job_id, extension), data=data)


async def upload_mask_image(
    client: S3Client, *, s3: S3Settings, job_id: str, data: bytes, extension: str
) -> InitImageKey:
    """Put an inpaint mask at `inputs/<job_id>/mask.<ext>` and return the reference a request carries.

    Raises:
        StorageError: the upload failed.
    """
    return await _upload_input(client, s3=s3, key=mask_key(job_id, extension), data=data)


async def _upload_input(client: S3Client, *, s3: S3Settings, key: str, data: bytes) -> InitImageKey:
    content_type = INIT_CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    await storage.put_object(client, bucket=s3.bucket, key=key, data=data, content_type=content_type)
    return InitImageKey(key=key)


@dataclass(frozen=True)
class StoredAdapter:
    """An adapter file in the bucket: the `key` and `sha256` a request's adapter entry names."""

    key: str
    sha256: str


async def upload_adapter(client: S3Client, *, s3: S3Settings, data: bytes) -> StoredAdapter:
    """Put an adapter file at `adapters/<sha256>.safetensors` (content-addressed: a re-upload changes nothing).

    Raises:
        StorageError: the upload failed.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    key = content_addressed_key(sha256)
    await storage.put_object(client, bucket=s3.bucket, key=key, data=data, content_type="application/octet-stream")
    return StoredAdapter(key=key, sha256=sha256)


async def delete_init_image(client: S3Client, *, s3: S3Settings, reference: InitImageKey) -> None:
    """Remove an init image whose job was never queued; a failure is logged, not raised (it is only litter)."""
    try:
        await storage.delete_object(client, bucket=s3.bucket, key=reference.key)
    except StorageError as exc:
        log.warning("could not remove the init image %s of a job that was not queued: %s", reference.key, exc.message)


async def read_record(client: S3Client, *, s3: S3Settings, job_id: str) -> TerminalEvent | None:
    """Return the job's result record (its terminal event), or None while it has none that holds.

    A record that is too large, not a terminal event or about another job is ignored, as if absent (logged).

    Raises:
        StorageError: the bucket could not be read.
    """
    stored = await storage.read_object(client, bucket=s3.bucket, key=record_key(job_id), max_bytes=MAX_RECORD_BYTES)
    return None if stored is None else _valid_record(stored.data, job_id=job_id)


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
