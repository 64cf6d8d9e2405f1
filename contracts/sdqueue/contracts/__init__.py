"""The sdqueue wire contract: request, events, error codes, names. Shared by the worker and every client."""

from sdqueue.contracts.control import CancelCommand
from sdqueue.contracts.errors import ErrorCode, ErrorInfo
from sdqueue.contracts.events import (
    CONTENT_TYPES,
    CancelledEvent,
    FailedEvent,
    ImageInfo,
    JobEvent,
    ProgressEvent,
    StartedEvent,
    SucceededEvent,
    TerminalEvent,
    Timings,
    is_terminal,
    parse_event,
    parse_terminal_event,
    utc_now,
)
from sdqueue.contracts.request import (
    JOB_ID_PATTERN,
    MAX_SEED,
    SCHEMA_VERSION,
    GenerationRequest,
    InitImageData,
    InitImageKey,
    Mode,
    OutputFormat,
)
from sdqueue.contracts.tokens import AUDIENCE, SCOPE_ADMIN, SCOPE_CANCEL, SCOPE_GENERATE, body_sha256

__all__ = [
    "AUDIENCE",
    "CONTENT_TYPES",
    "JOB_ID_PATTERN",
    "MAX_SEED",
    "SCHEMA_VERSION",
    "SCOPE_ADMIN",
    "SCOPE_CANCEL",
    "SCOPE_GENERATE",
    "CancelCommand",
    "CancelledEvent",
    "ErrorCode",
    "ErrorInfo",
    "FailedEvent",
    "GenerationRequest",
    "ImageInfo",
    "InitImageData",
    "InitImageKey",
    "JobEvent",
    "Mode",
    "OutputFormat",
    "ProgressEvent",
    "StartedEvent",
    "SucceededEvent",
    "TerminalEvent",
    "Timings",
    "body_sha256",
    "is_terminal",
    "parse_event",
    "parse_terminal_event",
    "utc_now",
]
