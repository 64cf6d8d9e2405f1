"""The user store: a JSON file of user names and argon2 password hashes, rewritten atomically."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,64}$"
MAX_PASSWORD_BYTES = 1024
_HASHER = PasswordHasher()
# Verifying an unknown user still costs one hash, so timing does not tell which user names exist.
_DUMMY_HASH = _HASHER.hash("not-a-real-password")


class UserStoreError(Exception):
    """A user store operation was refused; the message is safe to show."""


class UserExists(UserStoreError):
    """The user name is taken."""


class UnknownUser(UserStoreError):
    """No user has that name."""


class UserStore:
    """Users in one JSON file (`{"users": {name: {"hash", "created"}}}`); every change replaces the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, username: str, password: str) -> None:
        """Create a user with an argon2 hash of the password.

        Raises:
            UserExists: the name is taken.
            UserStoreError: the name or password is not acceptable.
        """
        check_username(username)
        if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
            raise UserStoreError("the password must be 1 to 1024 bytes")
        with self._lock:
            users = self._read()
            if username in users:
                raise UserExists(f"user {username!r} exists")
            users[username] = {"hash": _HASHER.hash(password), "created": datetime.now(UTC).isoformat()}
            self._write(users)

    def remove(self, username: str) -> None:
        """Delete a user.

        Raises:
            UnknownUser: no such user.
        """
        with self._lock:
            users = self._read()
            if users.pop(username, None) is None:
                raise UnknownUser(f"no user {username!r}")
            self._write(users)

    def names(self) -> list[str]:
        """Every user name, sorted."""
        return sorted(self._read())

    def verify(self, username: str, password: str) -> bool:
        """Say whether the password is the user's (False for unknown users, after the same work)."""
        entry = self._read().get(username)
        stored = entry["hash"] if entry is not None else _DUMMY_HASH
        try:
            matches = _HASHER.verify(stored, password.encode()[:MAX_PASSWORD_BYTES])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matches and entry is not None

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        users = json.loads(text).get("users", {})
        return {str(name): dict(entry) for name, entry in users.items()}

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"users": users}, indent=2, sort_keys=True)
        handle, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as temp:
                temp.write(text)
                temp.flush()
                os.fsync(temp.fileno())
            os.chmod(temp_name, 0o600)
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise


def check_username(username: str) -> None:
    """Raises UserStoreError unless the name is 1-64 of letters, digits and `_ . @ + -`."""
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise UserStoreError("a user name is 1-64 letters, digits or _ . @ + -")
