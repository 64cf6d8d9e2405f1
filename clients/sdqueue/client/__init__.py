"""The light sdqueue client: publish signed requests, await completion events, fetch images. No torch here."""

from sdqueue.client.client import SdqueueClient
from sdqueue.client.errors import (
    BrokerUnavailable,
    ClientError,
    JobFailed,
    RequestRefused,
    StorageUnavailable,
    UnroutableRequest,
    WaitTimeout,
)
from sdqueue.client.jobs import new_job_id
from sdqueue.client.sync import SyncClient
from sdqueue.client.tokens import bearer, mint_token

__all__ = [
    "BrokerUnavailable",
    "ClientError",
    "JobFailed",
    "RequestRefused",
    "SdqueueClient",
    "StorageUnavailable",
    "SyncClient",
    "UnroutableRequest",
    "WaitTimeout",
    "bearer",
    "mint_token",
    "new_job_id",
]
