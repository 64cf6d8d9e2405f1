"""`sdqueue users add/list/remove` manage the store the bridge signs callers in with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sdqueue.bridge import UserStore
from sdqueue.config import Settings
from sdqueue.devstack.stack import worker_environment


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


def test_users_add_list_remove(tmp_path: Path):
    path = tmp_path / "users.json"
    settings = Settings(state_dir=tmp_path)

    added = _sdqueue(settings, "users", "add", "carol", "--password-stdin", stdin="carol-password\n")
    duplicate = _sdqueue(settings, "users", "add", "carol", "--password-stdin", stdin="other\n")
    listed = _sdqueue(settings, "users", "list")

    assert added.returncode == 0, added.stderr
    assert duplicate.returncode == 1
    assert "exists" in duplicate.stderr
    assert listed.stdout.split() == ["carol"]
    stored = json.loads(path.read_text())["users"]["carol"]
    assert stored["hash"].startswith("$argon2")
    assert "carol-password" not in path.read_text()
    assert UserStore(path).verify("carol", "carol-password")
    assert not UserStore(path).verify("carol", "wrong")
    removed = _sdqueue(settings, "users", "remove", "carol")
    assert removed.returncode == 0, removed.stderr
    assert _sdqueue(settings, "users", "list").stdout == ""
    assert _sdqueue(settings, "users", "remove", "carol").returncode == 1


def test_user_names_are_restricted(tmp_path: Path):
    result = _sdqueue(Settings(state_dir=tmp_path), "users", "add", "../evil", "--password-stdin", stdin="pw\n")

    assert result.returncode == 1
    assert "user name" in result.stderr


def test_cli_import_stays_free_of_the_bridge_stack():
    code = (
        "import sys, sdqueue.client.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn', 'argon2'}))\n"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
