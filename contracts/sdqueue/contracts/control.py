"""Commands on `sdqueue.control`, the fanout every worker listens to: today only cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from sdqueue.contracts.request import JobId


class CancelCommand(BaseModel):
    """Ask the workers to cancel a job: a queued job is skipped when it arrives, a running one stops at its next step.

    The message carries a bearer JWT like a request: `jti` = `job_id`, `body_sha256` of these bytes, and scope
    `sdqueue:cancel` (only the job's own caller, the same `iss` and `sub`, may cancel it) or `sdqueue:admin` (any job).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    job_id: JobId
    reason: Annotated[str, StringConstraints(max_length=500)] = ""
