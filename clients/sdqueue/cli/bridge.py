"""`sdqueue bridge` (run the HTTP bridge) and `sdqueue bridge db upgrade` (create or migrate its database)."""

from __future__ import annotations

import argparse
import logging

from sdqueue.cli._output import print_error
from sdqueue.config import load_settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bridge` and `bridge db upgrade`."""
    bridge = commands.add_parser("bridge", help="run the HTTP bridge (FastAPI on uvicorn); `bridge db upgrade`")
    bridge.set_defaults(handler=run_bridge)
    database = bridge.add_subparsers(metavar="ACTION").add_parser("db", help="the bridge's database")
    database.add_subparsers(required=True, metavar="ACTION").add_parser(
        "upgrade", help="create the bridge's database or migrate it to this version's schema"
    ).set_defaults(handler=upgrade_bridge_database)


def run_bridge(_: argparse.Namespace) -> int:
    """Serve the bridge until signalled to stop."""
    from sdqueue.bridge import run_bridge as serve

    logging.getLogger().setLevel(logging.INFO)
    return serve(load_settings())


def upgrade_bridge_database(_: argparse.Namespace) -> int:
    """Migrate the bridge's database to this version's schema; 1 with the reason when it cannot be reached."""
    from sdqueue.bridge import DatabaseUnavailable, database_url, head_revision, upgrade_database

    settings = load_settings()
    try:
        upgrade_database(database_url(settings), timeout_s=settings.bridge.database_timeout_s)
    except DatabaseUnavailable as exc:
        return print_error(f"{exc}: {exc.detail}")
    print(f"the bridge database is at revision {head_revision()}")
    return 0
