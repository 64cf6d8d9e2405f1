"""Claim a job id for its caller before any generation: the first caller's claim holds, any other is turned away.

The claim is `jobs/<job_id>.claim`, created with a conditional put (`If-None-Match: *`), so two workers racing on
one id cannot both win. The owner's own redelivery finds its claim and goes on.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sdqueue import storage
from sdqueue.contracts.errors import JobIdTaken
from sdqueue.contracts.topology import claim_key
from sdqueue.worker.outcome import load_record
from sdqueue.worker.verify import Caller

if TYPE_CHECKING:
    from sdqueue.worker.services import Services

log = logging.getLogger(__name__)

MAX_CLAIM_BYTES = 4096


async def claim_job(job_id: str, *, caller: Caller, services: Services) -> None:
    """Create the job id's claim for `caller`, or return if `caller` already holds it.

    Raises:
        JobIdTaken: another caller holds the job id.
        StorageError: the bucket stayed unreachable for the outage budget.
    """
    s3 = services.settings.s3
    body = json.dumps({"iss": caller.issuer, "sub": caller.subject}).encode()
    created = await storage.durable(
        lambda: storage.put_object_if_absent(
            services.s3, bucket=s3.bucket, key=claim_key(job_id), data=body, content_type="application/json"
        ),
        job_id=job_id,
        budget_s=s3.outage_budget_s,
    )
    if created:
        return
    if await claimed_by(job_id, services=services) != caller:
        raise JobIdTaken("this job id is already used by another caller")
    log.info("job %s: claim already held by its caller (a redelivery)", job_id)


async def claimed_by(job_id: str, *, services: Services) -> Caller | None:
    """Return the caller holding the job id's claim, None when there is no claim (or it cannot be read).

    Raises:
        StorageError: the bucket stayed unreachable for the outage budget.
    """
    s3 = services.settings.s3
    stored = await storage.durable(
        lambda: storage.read_object(services.s3, bucket=s3.bucket, key=claim_key(job_id), max_bytes=MAX_CLAIM_BYTES),
        job_id=job_id,
        budget_s=s3.outage_budget_s,
    )
    if stored is None:
        return None
    try:
        fields = json.loads(stored.data)
        return Caller(str(fields["iss"]), str(fields["sub"]))
    except (ValueError, KeyError, TypeError):
        log.warning("job %s: its claim is unreadable", job_id)
        return None


async def is_held_by_another(job_id: str, *, caller: Caller, services: Services) -> bool:
    """Whether another caller claimed the job id, or owns its record (written before claims existed).

    Raises:
        StorageError: the bucket stayed unreachable for the outage budget.
    """
    claimant = await claimed_by(job_id, services=services)
    if claimant is not None:
        return claimant != caller
    record = await load_record(job_id, services=services)
    return record is not None and record.owner != caller
