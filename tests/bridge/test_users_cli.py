"""`sdqueue bridge db upgrade` and `sdqueue users add/list/password/remove` manage the database the bridge signs
callers in with, on SQLite (the default, under the state directory) and on PostgreSQL."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr

from sdqueue.bridge import Accounts, WrongCredentials, database_url, head_revision, open_database
from sdqueue.config import BridgeSettings, Settings
from sdqueue.devstack.stack import worker_environment

pytestmark = pytest.mark.slow  # each test runs `python -m sdqueue` as a process, a few seconds apiece


def _sdqueue(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdqueue", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=worker_environment(settings),
        timeout=60,
        check=False,
    )


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(state_dir=tmp_path, bridge=BridgeSettings(database_url=SecretStr(url)))


async def test_users_add_list_remove(blank_database_url: str, tmp_path: Path):
    settings = _settings(tmp_path, blank_database_url)
    before = _sdqueue(settings, "users", "list")
    upgraded = _sdqueue(settings, "bridge", "db", "upgrade")

    added = _sdqueue(settings, "users", "add", "carol", "--password-stdin", stdin="carol-password\n")
    duplicate = _sdqueue(settings, "users", "add", "carol", "--password-stdin", stdin="other\n")
    listed = _sdqueue(settings, "users", "list")

    assert before.returncode == 1
    assert "sdqueue bridge db upgrade" in before.stderr
    assert upgraded.returncode == 0, upgraded.stderr
    assert head_revision() in upgraded.stdout
    assert added.returncode == 0, added.stderr
    assert duplicate.returncode == 1
    assert "exists" in duplicate.stderr
    assert listed.stdout.split() == ["carol"]
    db = await open_database(blank_database_url)
    accounts = Accounts(db, bridge=settings.bridge)
    try:
        carol = await accounts.sign_in("carol", "carol-password", address="127.0.0.1")
        with pytest.raises(WrongCredentials):
            await accounts.sign_in("carol", "wrong", address="127.0.0.2")
        changed = _sdqueue(settings, "users", "password", "carol", "--password-stdin", stdin="new-password\n")
        assert changed.returncode == 0, changed.stderr
        assert await accounts.current(carol.user_id, token_generation=carol.token_generation) is None
        renewed = await accounts.sign_in("carol", "new-password", address="127.0.0.1")
        removed = _sdqueue(settings, "users", "remove", "carol")
        assert removed.returncode == 0, removed.stderr
        assert await accounts.current(carol.user_id, token_generation=renewed.token_generation) is None
    finally:
        accounts.close()
        await db.close()
    assert _sdqueue(settings, "users", "list").stdout == ""
    assert _sdqueue(settings, "users", "remove", "carol").returncode == 1
    again = _sdqueue(settings, "users", "add", "carol", "--password-stdin", stdin="carol-password\n")
    assert again.returncode == 1
    assert "exists" in again.stderr


def test_sqlite_under_the_state_dir_is_the_default(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state")

    upgraded = _sdqueue(settings, "bridge", "db", "upgrade")
    added = _sdqueue(settings, "users", "add", "dave", "--password-stdin", stdin="dave-password\n")

    assert upgraded.returncode == 0, upgraded.stderr
    assert added.returncode == 0, added.stderr
    files = sorted((tmp_path / "state").glob("bridge.db*"))
    assert files[0].name == "bridge.db"
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}  # password hashes: owner only
    assert all(b"dave-password" not in path.read_bytes() for path in files)


async def test_users_import_copies_an_earlier_json_store(tmp_path: Path):
    settings = Settings(state_dir=tmp_path)
    store = tmp_path / "users.json"
    hashes = {name: PasswordHasher().hash(f"{name}-password") for name in ("erin", "frank")}
    users = {name: {"hash": hashed, "created": "2026-01-02T03:04:05+00:00"} for name, hashed in hashes.items()}
    store.write_text(json.dumps({"users": users}))
    assert _sdqueue(settings, "bridge", "db", "upgrade").returncode == 0

    first = _sdqueue(settings, "users", "import", str(store))
    again = _sdqueue(settings, "users", "import", str(store))
    broken = _sdqueue(settings, "users", "import", str(tmp_path / "missing.json"))

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "imported 2 of 2 users: erin, frank"
    assert again.stdout.strip() == "imported 0 of 2 users"
    assert broken.returncode == 1
    assert "not a JSON user store" in broken.stderr
    db = await open_database(database_url(settings))
    accounts = Accounts(db, bridge=settings.bridge)
    try:
        assert (await accounts.sign_in("erin", "erin-password", address="127.0.0.1")).name == "erin"
        assert await accounts.names() == ["erin", "frank"]
    finally:
        accounts.close()
        await db.close()


def test_an_unreachable_database_is_reported(tmp_path: Path):
    settings = _settings(tmp_path, "postgresql+asyncpg://nobody@127.0.0.1:9/none")

    upgraded = _sdqueue(settings, "bridge", "db", "upgrade")
    listed = _sdqueue(settings, "users", "list")

    for result in (upgraded, listed):
        assert result.returncode == 1
        assert "bridge database" in result.stderr
        assert "Traceback" not in result.stderr


def test_user_names_are_restricted(tmp_path: Path):
    settings = Settings(state_dir=tmp_path)
    assert _sdqueue(settings, "bridge", "db", "upgrade").returncode == 0

    result = _sdqueue(settings, "users", "add", "../evil", "--password-stdin", stdin="pw\n")

    assert result.returncode == 1
    assert "user name" in result.stderr


def test_cli_import_stays_free_of_the_bridge_stack():
    code = (
        "import sys, sdqueue.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'uvicorn', 'argon2', 'sqlalchemy', 'alembic'}))\n"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_bridge_refuses_to_start_on_a_schema_it_does_not_know(blank_database_url: str, tmp_path: Path):
    settings = _settings(tmp_path, blank_database_url)
    bridge = settings.bridge.model_copy(update={"token_secret": SecretStr("t" * 40), "port": 0})
    settings = settings.model_copy(
        update={"bridge": bridge, "auth": settings.auth.model_copy(update={"hs256_secret": SecretStr("h" * 40)})}
    )

    refused = _sdqueue(settings, "bridge")

    assert refused.returncode == 1
    assert "sdqueue bridge db upgrade" in refused.stderr
