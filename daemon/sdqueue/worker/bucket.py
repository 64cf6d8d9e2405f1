"""The bucket behind the job path: claims and result records under `jobs/`, images under `inputs/` and `outputs/`.

Every operation waits out a storage outage of up to `outage_budget_s` in place (`storage.durable`), so a short
outage burns no delivery; past it the `StorageError` reaches the job path, which retries the job later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, unquote

from sdqueue import storage
from sdqueue.config import S3Settings
from sdqueue.contracts import TerminalEvent, parse_terminal_event
from sdqueue.contracts.topology import claim_key, record_key
from sdqueue.worker.ports import StoredRecord
from sdqueue.worker.verify import Caller

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)
T = TypeVar("T")

OWNER_METADATA_KEY = "sub"
ISSUER_METADATA_KEY = "iss"
MAX_RECORD_BYTES = 1024 * 1024
MAX_CLAIM_BYTES = 4096


class BucketRecords:
    """Claims (`jobs/<id>.claim`) and records (`jobs/<id>.json`), each created with `If-None-Match: *`."""

    def __init__(self, client: S3Client, *, s3: S3Settings, default_issuer: str) -> None:
        self._client, self._s3 = client, s3
        # Records written before owners carried their issuer belong to the default issuer.
        self._default_issuer = default_issuer

    async def claim(self, job_id: str, caller: Caller) -> bool:
        """Create the job id's claim for `caller`; False when a claim already exists."""
        body = json.dumps({"iss": caller.issuer, "sub": caller.subject}).encode()
        return await self._durable(job_id, lambda: self._put_if_absent(claim_key(job_id), body, metadata={}))

    async def claimant(self, job_id: str) -> Caller | None:
        """The caller holding the job id's claim, None when there is none or it is unreadable."""
        stored = await self._read(job_id, claim_key(job_id), max_bytes=MAX_CLAIM_BYTES)
        if stored is None:
            return None
        try:
            fields = json.loads(stored.data)
            return Caller(str(fields["iss"]), str(fields["sub"]))
        except (ValueError, KeyError, TypeError):
            log.warning("job %s: its claim is unreadable", job_id)
            return None

    async def read(self, job_id: str) -> StoredRecord | None:
        """The job's result record with its owner, None when it has none yet."""
        stored = await self._read(job_id, record_key(job_id), max_bytes=MAX_RECORD_BYTES)
        if stored is None:
            return None
        issuer = unquote(stored.metadata.get(ISSUER_METADATA_KEY, self._default_issuer))
        owner = Caller(issuer, unquote(stored.metadata.get(OWNER_METADATA_KEY, "")))
        return StoredRecord(event=parse_terminal_event(stored.data), owner=owner)

    async def write_once(self, job_id: str, event: TerminalEvent, *, owner: Caller) -> bool:
        """Store the job's result record, owned by `owner`, unless one exists; False when it did."""
        metadata = {
            ISSUER_METADATA_KEY: quote(owner.issuer, safe=""),
            OWNER_METADATA_KEY: quote(owner.subject, safe=""),
        }
        data = event.model_dump_json().encode()
        return await self._durable(job_id, lambda: self._put_if_absent(record_key(job_id), data, metadata=metadata))

    async def _read(self, job_id: str, key: str, *, max_bytes: int) -> storage.StoredBytes | None:
        return await self._durable(
            job_id, lambda: storage.read_object(self._client, bucket=self._s3.bucket, key=key, max_bytes=max_bytes)
        )

    async def _put_if_absent(self, key: str, data: bytes, *, metadata: dict[str, str]) -> bool:
        return await storage.put_object_if_absent(
            self._client,
            bucket=self._s3.bucket,
            key=key,
            data=data,
            content_type="application/json",
            metadata=metadata,
        )

    async def _durable(self, job_id: str, operation: Callable[[], Awaitable[T]]) -> T:
        return await storage.durable(operation, what=f"job {job_id}", budget_s=self._s3.outage_budget_s)


class BucketObjects:
    """Init images read and output images written, each waiting out an outage within the budget."""

    def __init__(self, client: S3Client, *, s3: S3Settings) -> None:
        self._client, self._s3 = client, s3

    async def read(self, key: str, *, max_bytes: int) -> bytes | None:
        """At most `max_bytes + 1` bytes of the object, None when it does not exist.

        Raises:
            StorageRefused: the bucket refused this key (the key's fault: retrying cannot help).
            StorageError: the bucket stayed unreachable for the outage budget.
        """
        stored = await storage.durable(
            lambda: storage.read_object(self._client, bucket=self._s3.bucket, key=key, max_bytes=max_bytes),
            what=f"object {key}",
            budget_s=self._s3.outage_budget_s,
        )
        return None if stored is None else stored.data

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store `data` under `key`, replacing what is there."""
        await storage.durable(
            lambda: storage.put_object(
                self._client, bucket=self._s3.bucket, key=key, data=data, content_type=content_type
            ),
            what=f"object {key}",
            budget_s=self._s3.outage_budget_s,
        )

    def url(self, key: str) -> str:
        """The public URL of `key` when a base URL is configured, else a presigned GET URL."""
        return storage.object_url(self._client, s3=self._s3, key=key)
