"""The sdqueue HTTP bridge: a FastAPI app that authenticates callers and drives the queue for them."""

from sdqueue.bridge._app import create_app, run_bridge
from sdqueue.bridge._auth import issue_access_token, read_access_token
from sdqueue.bridge._errors import HTTP_STATUS, BridgeError
from sdqueue.bridge._users import UnknownUser, UserExists, UserStore, UserStoreError

__all__ = [
    "HTTP_STATUS",
    "BridgeError",
    "UnknownUser",
    "UserExists",
    "UserStore",
    "UserStoreError",
    "create_app",
    "issue_access_token",
    "read_access_token",
    "run_bridge",
]
