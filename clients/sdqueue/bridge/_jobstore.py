"""The jobs the bridge accepted, by owner's user id: what history lists and what a job read is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from sdqueue.bridge._db import Database, Job


@dataclass(frozen=True)
class JobRow:
    """One accepted job as the bridge remembers it."""

    job_id: str
    owner_id: str
    created_at: datetime
    mode: str
    model: str
    prompt: str
    width: int
    height: int
    steps: int
    status: str = "queued"


class JobStore:
    """Jobs in the bridge's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, row: JobRow) -> None:
        """Remember an accepted job (its owner must exist)."""
        async with self._db.sessions.begin() as session:
            session.add(Job(**_fields(row)))

    async def get(self, job_id: str, *, owner_id: str) -> JobRow | None:
        """The job if it exists and belongs to `owner_id`, else None (another's job reads as missing)."""
        async with self._db.sessions() as session:
            job = await session.scalar(select(Job).where(Job.job_id == job_id, Job.owner_id == owner_id))
        return None if job is None else _row(job)

    async def recent(self, owner_id: str, *, limit: int) -> list[JobRow]:
        """The owner's newest `limit` jobs, newest first."""
        statement = (
            select(Job).where(Job.owner_id == owner_id).order_by(Job.created_at.desc(), Job.job_id.desc()).limit(limit)
        )
        async with self._db.sessions() as session:
            return [_row(job) for job in await session.scalars(statement)]

    async def set_status(self, job_id: str, status: str) -> None:
        """Record a job's latest known status (no-op for an unknown job)."""
        async with self._db.sessions.begin() as session:
            await session.execute(update(Job).where(Job.job_id == job_id).values(status=status))

    async def delete(self, job_id: str) -> None:
        """Forget a job, e.g. one whose publish failed."""
        async with self._db.sessions.begin() as session:
            await session.execute(delete(Job).where(Job.job_id == job_id))


def _fields(row: JobRow) -> dict[str, object]:
    return {
        "job_id": row.job_id,
        "owner_id": row.owner_id,
        "created_at": row.created_at,
        "mode": row.mode,
        "model": row.model,
        "prompt": row.prompt,
        "width": row.width,
        "height": row.height,
        "steps": row.steps,
        "status": row.status,
    }


def _row(job: Job) -> JobRow:
    return JobRow(
        job_id=job.job_id,
        owner_id=job.owner_id,
        created_at=job.created_at,
        mode=job.mode,
        model=job.model,
        prompt=job.prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        status=job.status,
    )
