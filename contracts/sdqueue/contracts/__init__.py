"""The sdqueue wire contract: request, events, error codes, names. Shared by the worker and every client."""

from sdqueue.contracts.control import CancelCommand
from sdqueue.contracts.errors import BridgeCode, ErrorCode, ErrorInfo
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
from sdqueue.contracts.fleet import HEARTBEAT_PATTERN, ModelFamily, WorkerHeartbeat, heartbeat_routing_key
from sdqueue.contracts.quota import QUOTA_CLAIM, Priority, Quota
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
    "HEARTBEAT_PATTERN",
    "JOB_ID_PATTERN",
    "MAX_SEED",
    "QUOTA_CLAIM",
    "SCHEMA_VERSION",
    "SCOPE_ADMIN",
    "SCOPE_CANCEL",
    "SCOPE_GENERATE",
    "BridgeCode",
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
    "ModelFamily",
    "OutputFormat",
    "Priority",
    "ProgressEvent",
    "Quota",
    "StartedEvent",
    "SucceededEvent",
    "TerminalEvent",
    "Timings",
    "WorkerHeartbeat",
    "body_sha256",
    "heartbeat_routing_key",
    "is_terminal",
    "parse_event",
    "parse_terminal_event",
    "utc_now",
]
