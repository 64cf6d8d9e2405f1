"""Error codes on the wire, the error object carried by failed and cancelled events, and the one error tree.

Every error the worker, the client and the bridge raise is an `SdqueueError`; its message is safe to show the
requester. `code` is an `ErrorCode` (on the broker's wire) or a `BridgeCode` (answered over HTTP and raised by the
client only, never in an event); `retryable` says whether the same request may succeed later.

```
SdqueueError                      code                     retryable
├── JobRejected                   the job is at fault: dead-lettered after its failed event
│   ├── Unauthenticated           unauthenticated          no
│   │   └── MissingToken          + Unattributed
│   ├── InvalidToken              invalid_token            no
│   │   └── UnverifiedToken       + Unattributed
│   ├── TokenExpired              token_expired            no
│   ├── BodyMismatch              body_mismatch            no
│   ├── Forbidden                 forbidden                no
│   │   └── JobIdTaken            + Unattributed
│   ├── InvalidRequest            invalid_request          no
│   ├── UnknownModel              unknown_model            no
│   │   └── UnroutableRequest     + ClientError: no queue is bound for the alias
│   ├── LimitsExceeded            limits_exceeded          no
│   ├── InvalidImage              invalid_image            no
│   ├── ImageTooLarge             image_too_large          no
│   ├── GenerationFailed          generation_failed        no
│   └── Unattributed              (no code of its own) dead-lettered without any event
├── Cancelled                     cancelled                no
├── ServiceUnavailable            a dependency is at fault: requeued, dead-lettered past the delivery limit
│   ├── StorageError              storage_error            yes
│   │   ├── StorageRefused        storage_error            yes (the same request is refused again)
│   │   └── StorageUnavailable    + ClientError
│   ├── OutOfMemory               out_of_memory            yes
│   ├── BrokerUnavailable         unavailable (BridgeCode) yes; + ClientError
│   └── RequestRefused            unavailable (BridgeCode) yes; + ClientError: the queue is full
├── DeliveryLimitExceeded         delivery_limit_exceeded  no
├── ClientError                   (no code of its own) raised by the client, the CLI and the bridge
│   ├── UsageError                invalid_request          no: a missing setting, bad input, not connected
│   ├── InvalidWebhook            unauthenticated          no
│   ├── WaitTimeout               timeout (BridgeCode)     yes
│   └── JobFailed                 the event's code         the event's
└── BridgeError                   any code, given          as its code says (RETRYABLE_CODES)
```
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sdqueue.contracts.events import CancelledEvent, FailedEvent


class ErrorCode(StrEnum):
    """Every reason a job can end without images. Adding one is a contract change; renaming one breaks callers."""

    UNAUTHENTICATED = "unauthenticated"
    INVALID_TOKEN = "invalid_token"  # noqa: S105  # an error code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105  # an error code, not a secret
    BODY_MISMATCH = "body_mismatch"
    FORBIDDEN = "forbidden"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    LIMITS_EXCEEDED = "limits_exceeded"
    OUT_OF_MEMORY = "out_of_memory"
    GENERATION_FAILED = "generation_failed"
    STORAGE_ERROR = "storage_error"
    CANCELLED = "cancelled"
    DELIVERY_LIMIT_EXCEEDED = "delivery_limit_exceeded"


class BridgeCode(StrEnum):
    """Codes the bridge answers over HTTP and the client raises that no event carries: not on the broker's wire."""

    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_REQUESTS = "too_many_requests"


class ErrorInfo(BaseModel):
    """Why a job failed, phrased so that it is safe to show the requester."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: ErrorCode
    message: str = Field(max_length=2000)
    retryable: bool


class SdqueueError(Exception):
    """Base of every error sdqueue raises. The message is safe to show the requester."""

    code: ErrorCode | BridgeCode
    retryable: bool

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_info(self) -> ErrorInfo:
        """Return the wire form of this error.

        Raises:
            TypeError: the code is a `BridgeCode`, which no event carries.
        """
        if not isinstance(self.code, ErrorCode):
            raise TypeError(f"{self.code} is answered over HTTP only, never on the broker's wire")
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


class ClientError(SdqueueError):
    """Marks what the client, the CLI and the bridge raise, so a caller can catch all of it; no code of its own."""


class UsageError(ClientError):
    """The caller's own mistake: a setting it needs is missing, a client used before it connected, bad input."""

    code = ErrorCode.INVALID_REQUEST
    retryable = False


class UnroutableRequest(UnknownModel, ClientError):
    """No worker queue is bound for the request's model alias: the broker returned the message."""

    def __init__(self, model: str) -> None:
        super().__init__(f"no worker serves model {model!r}")
        self.model = model


class BrokerUnavailable(ServiceUnavailable, ClientError):
    """The broker could not be reached or did not confirm in time."""

    code = BridgeCode.UNAVAILABLE


class RequestRefused(ServiceUnavailable, ClientError):
    """The broker refused the request (for example the queue is full)."""

    code = BridgeCode.UNAVAILABLE


class StorageUnavailable(StorageError, ClientError):
    """The bucket could not be reached, or an image could not be downloaded."""


class InvalidWebhook(ClientError):
    """A received webhook failed verification: a header is missing, the signature differs or it is stale."""

    code = ErrorCode.UNAUTHENTICATED
    retryable = False


class WaitTimeout(ClientError):
    """No terminal event arrived for the job within the time allowed."""

    code = BridgeCode.TIMEOUT
    retryable = True


class JobFailed(ClientError):
    """The job ended as failed or cancelled; `event.error` says why, and gives this error its code."""

    def __init__(self, event: FailedEvent | CancelledEvent) -> None:
        super().__init__(f"job {event.job_id} {event.type}: {event.error.code}: {event.error.message}")
        self.event = event
        self.code = event.error.code
        self.retryable = event.error.retryable


class BridgeError(SdqueueError):
    """An HTTP error answer of the bridge; `headers` go with it (`Retry-After`, `WWW-Authenticate`)."""

    def __init__(self, code: ErrorCode | BridgeCode, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = code in RETRYABLE_CODES
        self.headers = headers


ERROR_CLASSES: dict[ErrorCode | BridgeCode, type[SdqueueError]] = {
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
# The codes a retry of the same request may cure: a dependency's outage, a wait or a rate that ran out.
RETRYABLE_CODES: frozenset[ErrorCode | BridgeCode] = frozenset(
    {
        *(code for code, cls in ERROR_CLASSES.items() if cls.retryable),
        BridgeCode.UNAVAILABLE,
        BridgeCode.TIMEOUT,
        BridgeCode.TOO_MANY_REQUESTS,
    }
)
