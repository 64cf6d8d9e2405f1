"""The optional `quota` claim of a request token: per-caller caps and a priority, enforced by the worker."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from sdqueue.contracts.request import ImageCount, ModelAlias, Steps

QUOTA_CLAIM = "quota"
Priority = Literal["low", "normal", "high"]


class Quota(BaseModel):
    """What an issuer allows one caller: caps at or below the worker's own, the models it may use, its priority.

    `low` jobs always wait in the overflow lane; `high` jobs are never moved there and run before `normal` ones.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: PositiveInt | None = Field(default=None, description="Largest width x height of one image.")
    max_steps: Steps | None = Field(default=None, description="Most denoising steps.")
    max_images: ImageCount | None = Field(default=None, description="Most images in one job.")
    models: tuple[ModelAlias, ...] | None = Field(default=None, description="Model aliases allowed; unset: all.")
    priority: Priority = Field(default="normal", description="Scheduling class of the caller's jobs.")

    def claim(self) -> dict[str, object]:
        """The claim's JSON value, leaving out what is unset."""
        return self.model_dump(mode="json", exclude_defaults=True)


UNLIMITED = Quota()
