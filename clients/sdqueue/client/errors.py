"""Errors a client caller can handle; none of them leaks an aio-pika, botocore or httpx exception."""

from __future__ import annotations

from sdqueue.contracts import CancelledEvent, ErrorCode, FailedEvent


class ClientError(Exception):
    """Base of everything the sdqueue client raises."""


class UnroutableRequest(ClientError):
    """No worker queue is bound for the request's model alias: the broker returned the message."""

    code = ErrorCode.UNKNOWN_MODEL

    def __init__(self, model: str) -> None:
        super().__init__(f"no worker serves model {model!r}")
        self.model = model


class RequestRefused(ClientError):
    """The broker refused the request (for example the queue is full)."""


class BrokerUnavailable(ClientError):
    """The broker could not be reached or did not confirm in time."""


class StorageUnavailable(ClientError):
    """The bucket could not be reached, or an image could not be downloaded."""


class InvalidWebhook(ClientError):
    """A received webhook failed verification: a header is missing, the signature differs or it is stale."""


class WaitTimeout(ClientError):
    """No terminal event arrived for the job within the time allowed."""


class JobFailed(ClientError):
    """The job ended as failed or cancelled; `event.error` says why."""

    def __init__(self, event: FailedEvent | CancelledEvent) -> None:
        super().__init__(f"job {event.job_id} {event.type}: {event.error.code}: {event.error.message}")
        self.event = event

    @property
    def code(self) -> ErrorCode:
        """The contract's error code."""
        return self.event.error.code
