"""Alembic environment: migrates on the connection `upgrade_database` passes, or on `sqlalchemy.url` (alembic CLI)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from sdqueue.bridge._db import DEFAULT_TIMEOUT_S, Base, create_engine


def run_on(connection: Connection) -> None:
    """Run the pending migrations in one transaction (batch mode, so SQLite can alter tables)."""
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    """Connect to `url` and migrate it."""
    engine = create_engine(url, timeout_s=DEFAULT_TIMEOUT_S)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    """Migrate on the given connection if there is one, else on the configured URL."""
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("set sqlalchemy.url, or migrate with `sdqueue bridge db upgrade`")
    asyncio.run(run_on_url(url))


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
main()
