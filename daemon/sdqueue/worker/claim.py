"""Claim a job id for its caller before any generation: the first caller's claim holds, any other is turned away.

The claim is created only if absent (`If-None-Match: *` in the bucket), so two workers racing on one id cannot
both win. The owner's own redelivery finds its claim and goes on.
"""

from __future__ import annotations

import logging

from sdqueue.contracts.errors import JobIdTaken
from sdqueue.worker.ports import RecordStore
from sdqueue.worker.verify import Caller

log = logging.getLogger(__name__)


async def claim_job(job_id: str, *, caller: Caller, records: RecordStore) -> None:
    """Create the job id's claim for `caller`, or return if `caller` already holds it.

    Raises:
        JobIdTaken: another caller holds the job id.
        StorageError: the store stayed unreachable for the outage budget.
    """
    if await records.claim(job_id, caller):
        return
    if await records.claimant(job_id) != caller:
        raise JobIdTaken("this job id is already used by another caller")
    log.info("job %s: claim already held by its caller (a redelivery)", job_id)


async def is_held_by_another(job_id: str, *, caller: Caller, records: RecordStore) -> bool:
    """Whether another caller claimed the job id, or owns its record (written before claims existed).

    Raises:
        StorageError: the store stayed unreachable for the outage budget.
    """
    claimant = await records.claimant(job_id)
    if claimant is not None:
        return claimant != caller
    record = await records.read(job_id)
    return record is not None and record.owner != caller
