"""The light sdqueue client: publish signed requests, await completion events, fetch images. No torch here."""

from sdqueue.client.client import SdqueueClient, sent_by_worker
from sdqueue.client.files import describe_saved_images, save_images
from sdqueue.client.jobs import new_job_id, request_body, request_message
from sdqueue.client.sync import SyncClient
from sdqueue.client.tokens import bearer, mint_token
from sdqueue.client.webhooks import verify_webhook
from sdqueue.contracts.errors import (
    BrokerUnavailable,
    ClientError,
    InvalidWebhook,
    JobFailed,
    RequestRefused,
    StorageUnavailable,
    UnroutableRequest,
    UsageError,
    WaitTimeout,
)

__all__ = [
    "BrokerUnavailable",
    "ClientError",
    "InvalidWebhook",
    "JobFailed",
    "RequestRefused",
    "SdqueueClient",
    "StorageUnavailable",
    "SyncClient",
    "UnroutableRequest",
    "UsageError",
    "WaitTimeout",
    "bearer",
    "describe_saved_images",
    "mint_token",
    "new_job_id",
    "request_body",
    "request_message",
    "save_images",
    "sent_by_worker",
    "verify_webhook",
]
