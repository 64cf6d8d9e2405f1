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
from sdqueue.bridge._db import (
    Database,
    DatabaseUnavailable,
    SchemaMismatch,
    database_url,
    head_revision,
    open_database,
    upgrade_database,
)
from sdqueue.bridge._errors import HTTP_STATUS
from sdqueue.bridge._jobstore import JobRow, JobStore
from sdqueue.contracts.errors import BridgeError

__all__ = [
    "HTTP_STATUS",
    "Account",
    "AccountError",
    "Accounts",
    "BridgeError",
    "Database",
    "DatabaseUnavailable",
    "JobRow",
    "JobStore",
    "SchemaMismatch",
    "Throttled",
    "UnknownUser",
    "UserExists",
    "WrongCredentials",
    "create_app",
    "database_url",
    "head_revision",
    "issue_access_token",
    "open_database",
    "read_access_token",
    "run_bridge",
    "upgrade_database",
]
