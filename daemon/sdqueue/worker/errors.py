"""The worker's error hierarchy: one class per contract error code, each knowing whether a retry can help."""

from __future__ import annotations

from typing import ClassVar

from sdqueue.contracts import ErrorCode, ErrorInfo


class SdqueueError(Exception):
    """Base of every error the worker turns into an event. The message is safe to show the requester."""

    code: ClassVar[ErrorCode]
    retryable: ClassVar[bool]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_info(self) -> ErrorInfo:
        """Return the wire form of this error."""
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable)


class JobRejected(SdqueueError):
    """The job itself is at fault: never retried, dead-lettered after its failed event."""

    retryable = False


class Unauthenticated(JobRejected):
    code = ErrorCode.UNAUTHENTICATED


class InvalidToken(JobRejected):
    code = ErrorCode.INVALID_TOKEN


class TokenExpired(JobRejected):
    code = ErrorCode.TOKEN_EXPIRED


class BodyMismatch(JobRejected):
    code = ErrorCode.BODY_MISMATCH


class Forbidden(JobRejected):
    code = ErrorCode.FORBIDDEN


class InvalidRequest(JobRejected):
    code = ErrorCode.INVALID_REQUEST


class UnknownModel(JobRejected):
    code = ErrorCode.UNKNOWN_MODEL


class LimitsExceeded(JobRejected):
    code = ErrorCode.LIMITS_EXCEEDED


class InvalidImage(JobRejected):
    code = ErrorCode.INVALID_IMAGE


class ImageTooLarge(JobRejected):
    code = ErrorCode.IMAGE_TOO_LARGE


class GenerationFailed(JobRejected):
    code = ErrorCode.GENERATION_FAILED


class Unattributed(JobRejected):
    """No verified caller may speak for this job id: dead-lettered without any event or reply.

    Reporting it would let anyone who may publish a request make another caller's job look failed.
    """


class MissingToken(Unauthenticated, Unattributed):
    """No bearer token, or one that is not a JWT."""


class UnverifiedToken(InvalidToken, Unattributed):
    """The signature does not verify with a key of the token's own issuer, or the token names another job."""


class JobIdTaken(Forbidden, Unattributed):
    """The job id is claimed by another caller."""


class Cancelled(SdqueueError):
    """The owner or an admin cancelled the job."""

    code = ErrorCode.CANCELLED
    retryable = False


class ServiceUnavailable(SdqueueError):
    """A dependency is at fault: the request is requeued, and dead-lettered past the delivery limit."""

    retryable = True


class StorageError(ServiceUnavailable):
    code = ErrorCode.STORAGE_ERROR


class StorageRefused(StorageError):
    """The bucket refused the request itself (a 4xx other than throttling): the same request will be refused again."""


class OutOfMemory(ServiceUnavailable):
    code = ErrorCode.OUT_OF_MEMORY


class DeliveryLimitExceeded(SdqueueError):
    """A retryable failure happened on the last delivery the queue allows."""

    code = ErrorCode.DELIVERY_LIMIT_EXCEEDED
    retryable = False


ERROR_CLASSES: dict[ErrorCode, type[SdqueueError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        InvalidToken,
        TokenExpired,
        BodyMismatch,
        Forbidden,
        InvalidRequest,
        UnknownModel,
        LimitsExceeded,
        InvalidImage,
        ImageTooLarge,
        GenerationFailed,
        Cancelled,
        StorageError,
        OutOfMemory,
        DeliveryLimitExceeded,
    )
}
