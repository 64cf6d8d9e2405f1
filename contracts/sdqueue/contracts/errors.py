"""Error codes on the wire and the error object carried by failed and cancelled events."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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


class ErrorInfo(BaseModel):
    """Why a job failed, phrased so that it is safe to show the requester."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: ErrorCode
    message: str = Field(max_length=2000)
    retryable: bool
