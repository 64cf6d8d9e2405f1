"""Worker heartbeats on `sdqueue.events`: which workers are up, what they serve and which models they hold loaded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from sdqueue.contracts.adapters import NamedAdapter
from sdqueue.contracts.events import utc_now
from sdqueue.contracts.request import GuidanceScale, ImageSide, ModelAlias, SchedulerName

HEARTBEAT_PATTERN = "worker.heartbeat.#"
# The architecture a model was trained as, which fixes its native size and its latent space (see docs/operations.md).
ModelFamily = Literal["sd1", "sd2", "sdxl"]


class FamilyDefaults(BaseModel):
    """The size and guidance a family's models were trained for: what a request that leaves them out gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: ImageSide
    height: ImageSide
    guidance_scale: GuidanceScale


# The one table of family defaults: the worker fills requests from it, the bridge's `/v1/models` shows it.
FAMILY_DEFAULTS: dict[ModelFamily, FamilyDefaults] = {
    "sd1": FamilyDefaults(width=512, height=512, guidance_scale=7.5),
    "sd2": FamilyDefaults(width=768, height=768, guidance_scale=7.5),
    "sdxl": FamilyDefaults(width=1024, height=1024, guidance_scale=5.0),
}


def heartbeat_routing_key(worker: str) -> str:
    """Routing key of a worker's heartbeats; `#` in the pattern also matches names with dots (host names)."""
    return f"worker.heartbeat.{worker}"


class WorkerHeartbeat(BaseModel):
    """What a worker says about itself every `heartbeat_interval_s`; `sdqueue models` builds the fleet view from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    type: Literal["heartbeat"] = "heartbeat"
    worker: str
    at: AwareDatetime = Field(default_factory=utc_now)
    state: Literal["ready", "draining"]
    models: tuple[ModelAlias, ...] = Field(description="Aliases this worker consumes.")
    loaded: tuple[ModelAlias, ...] = Field(description="Aliases whose pipelines are in memory, most recent last.")
    families: dict[ModelAlias, ModelFamily] = Field(
        default_factory=dict, description="The family of each served alias, known from its loaded pipeline."
    )
    schedulers: dict[ModelAlias, tuple[SchedulerName, ...]] = Field(
        default_factory=dict, description="The scheduler names each served alias accepts, known from its pipeline."
    )
    adapters: tuple[NamedAdapter, ...] = Field(
        default=(), description="The worker's named adapters (its adapter map), each with the sha256 to sign."
    )
    device: str
    in_flight: Annotated[int, Field(ge=0)]
    interval_s: Annotated[float, Field(gt=0)] = Field(description="Seconds until the next heartbeat.")

    @field_validator("at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)
