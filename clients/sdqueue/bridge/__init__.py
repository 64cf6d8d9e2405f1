"""The sdqueue HTTP bridge: a FastAPI app that authenticates callers and drives the queue for them."""

from sdqueue.bridge._accounts import (
    Account,
    AccountError,
    Accounts,
    Throttled,
    UnknownUser,
    UserExists,
    WrongCredentials,
)
from sdqueue.bridge._app import create_app, run_bridge
from sdqueue.bridge._auth import issue_access_token, read_access_token
from sdqueue.bridge._db import Database, SchemaMismatch, database_url, open_database, upgrade_database
from sdqueue.bridge._errors import HTTP_STATUS, BridgeError

__all__ = [
    "HTTP_STATUS",
    "Account",
    "AccountError",
    "Accounts",
    "BridgeError",
    "Database",
    "SchemaMismatch",
    "Throttled",
    "UnknownUser",
    "UserExists",
    "WrongCredentials",
    "create_app",
    "database_url",
    "issue_access_token",
    "open_database",
    "read_access_token",
    "run_bridge",
    "upgrade_database",
]
