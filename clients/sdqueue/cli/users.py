"""`sdqueue users add|password|remove|list|import`: the accounts the bridge signs callers in with."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sdqueue.cli._output import print_error
from sdqueue.client import UsageError
from sdqueue.config import load_settings

if TYPE_CHECKING:
    from sdqueue.bridge import Accounts


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `users` and its actions."""
    users = commands.add_parser("users", help="the bridge's users").add_subparsers(required=True, metavar="ACTION")
    name_and_password = argparse.ArgumentParser(add_help=False)
    name_and_password.add_argument("name")
    name_and_password.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    users.add_parser("add", parents=[name_and_password], help="create a user (asks for the password)").set_defaults(
        handler=add_user
    )
    users.add_parser(
        "password", parents=[name_and_password], help="change a user's password (asks for it) and retire its tokens"
    ).set_defaults(handler=change_password)
    remove = users.add_parser("remove", help="remove a user (the name stays taken) and retire its tokens")
    remove.add_argument("name")
    remove.set_defaults(handler=remove_user)
    users.add_parser("list", help="list the active user names").set_defaults(handler=list_users)
    imported = users.add_parser("import", help="copy users and their hashes from an earlier version's users.json")
    imported.add_argument("path", type=Path, help="the JSON user store, e.g. .sdqueue/users.json")
    imported.set_defaults(handler=import_users)


def add_user(args: argparse.Namespace) -> int:
    """Create `args.name` with a new password."""
    password = _new_password(args)

    async def add(accounts: Accounts) -> str:
        await accounts.add(args.name, password)
        return f"added {args.name}"

    return asyncio.run(_with_accounts(add))


def change_password(args: argparse.Namespace) -> int:
    """Give `args.name` a new password, which retires its tokens."""
    password = _new_password(args)

    async def change(accounts: Accounts) -> str:
        await accounts.set_password(args.name, password)
        return f"changed the password of {args.name}"

    return asyncio.run(_with_accounts(change))


def remove_user(args: argparse.Namespace) -> int:
    """Remove `args.name`; the name stays taken."""

    async def remove(accounts: Accounts) -> str:
        await accounts.remove(args.name)
        return f"removed {args.name}"

    return asyncio.run(_with_accounts(remove))


def list_users(_: argparse.Namespace) -> int:
    """Print the active user names, one a line."""

    async def names(accounts: Accounts) -> str:
        return "\n".join(await accounts.names())

    return asyncio.run(_with_accounts(names))


def import_users(args: argparse.Namespace) -> int:
    """Copy the users of an earlier version's JSON store, skipping names already taken."""
    stored = _read_user_store(args.path)

    async def copy(accounts: Accounts) -> str:
        from sdqueue.bridge import UserExists

        added = []
        for name, password_hash, created_at in stored:
            try:
                await accounts.import_hash(name, password_hash, created_at=created_at)
            except UserExists:
                continue
            added.append(name)
        return f"imported {len(added)} of {len(stored)} users" + (f": {', '.join(added)}" if added else "")

    return asyncio.run(_with_accounts(copy))


def _new_password(args: argparse.Namespace) -> str:
    """The password from standard input (`--password-stdin`), or asked for twice at the terminal."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        raise UsageError("the passwords differ")
    return password


def _read_user_store(path: Path) -> list[tuple[str, str, datetime]]:
    """(name, hash, created) of each user in an earlier version's `{"users": {name: {"hash", "created"}}}`."""
    try:
        users = json.loads(path.read_text(encoding="utf-8"))["users"]
        stored = [
            (str(name), str(entry["hash"]), datetime.fromisoformat(entry["created"])) for name, entry in users.items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a JSON user store ({type(exc).__name__}: {exc})") from exc
    # The store wrote UTC offsets; a bare time is taken as UTC.
    return sorted(
        (name, password_hash, created.replace(tzinfo=created.tzinfo or UTC)) for name, password_hash, created in stored
    )


async def _with_accounts(action: Callable[[Accounts], Awaitable[str]]) -> int:
    """Open the bridge's database, run one account action, print its outcome; 1 with the reason on refusal."""
    from sdqueue.bridge import AccountError, Accounts, DatabaseUnavailable, SchemaMismatch, database_url, open_database

    settings = load_settings()
    try:
        db = await open_database(database_url(settings), timeout_s=settings.bridge.database_timeout_s)
    except SchemaMismatch as exc:
        return print_error(str(exc))
    except DatabaseUnavailable as exc:
        return print_error(f"{exc}: {exc.detail}")
    accounts = Accounts(db, bridge=settings.bridge)
    try:
        outcome = await action(accounts)
    except AccountError as exc:
        return print_error(str(exc))
    except DatabaseUnavailable as exc:
        return print_error(f"{exc}: {exc.detail}")
    finally:
        accounts.close()
        await db.close()
    if outcome:
        print(outcome)
    return 0
