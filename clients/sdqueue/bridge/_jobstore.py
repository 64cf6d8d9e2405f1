"""The jobs the bridge accepted, by owner's user id: what history lists and what a job read is checked against."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime

from sqlalchemy import delete, insert, select, update

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
    """Jobs in the bridge's database; reads are Core selects (a job read or history is on every poll).

    Every method raises DatabaseUnavailable (from `sdqueue.bridge._db`) when the database is lost, locked or too slow.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, row: JobRow) -> None:
        """Remember an accepted job (its owner must exist)."""
        async with self._db.writing() as session:
            await session.execute(insert(Job).values(**asdict(row)))

    async def get(self, job_id: str, *, owner_id: str) -> JobRow | None:
        """The job if it exists and belongs to `owner_id`, else None (another's job reads as missing)."""
        statement = select(*_COLUMNS).where(Job.job_id == job_id, Job.owner_id == owner_id)
        async with self._db.reading() as session:
            found = (await session.execute(statement)).one_or_none()
        return None if found is None else JobRow(**found._asdict())

    async def recent(self, owner_id: str, *, limit: int) -> list[JobRow]:
        """The owner's newest `limit` jobs, newest first."""
        statement = (
            select(*_COLUMNS)
            .where(Job.owner_id == owner_id)
            .order_by(Job.created_at.desc(), Job.job_id.desc())
            .limit(limit)
        )
        async with self._db.reading() as session:
            return [JobRow(**found._asdict()) for found in await session.execute(statement)]

    async def set_status(self, job_id: str, status: str) -> None:
        """Record a job's latest known status (no-op for an unknown job)."""
        async with self._db.writing() as session:
            await session.execute(update(Job).where(Job.job_id == job_id).values(status=status))

    async def delete(self, job_id: str) -> None:
        """Forget a job, e.g. one whose publish failed."""
        async with self._db.writing() as session:
            await session.execute(delete(Job).where(Job.job_id == job_id))


# The table's columns in JobRow's order and names.
_COLUMNS = tuple(getattr(Job, field.name) for field in fields(JobRow))
