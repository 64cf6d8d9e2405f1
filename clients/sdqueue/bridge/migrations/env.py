"""Alembic environment: migrates on the connection `upgrade_database` passes, or on `sqlalchemy.url` (alembic CLI)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from sdqueue.bridge._db import DEFAULT_TIMEOUT_S, Base, run_in_transaction


def run_on(connection: Connection) -> None:
    """Run the pending migrations in one transaction (batch mode, so SQLite can alter tables)."""
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Migrate on the given connection if there is one, else on the configured URL."""
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("set sqlalchemy.url, or migrate with `sdqueue bridge db upgrade`")
    asyncio.run(run_in_transaction(url, run_on, timeout_s=DEFAULT_TIMEOUT_S))


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
main()
