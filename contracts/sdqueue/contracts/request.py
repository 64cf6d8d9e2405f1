"""The generation request: the JSON body a client publishes to `sdqueue.requests`."""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

SCHEMA_VERSION: Literal[1] = 1
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MODEL_ALIAS_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_SEED = 2**32 - 1
MAX_METADATA_ENTRIES = 16
MAX_CALLBACK_URL_LENGTH = 2048
# An object key: segments joined by single slashes, no leading slash, no `..` anywhere, no control characters.
_KEY_CHAR = r"[^/.\x00-\x1f\x7f-\x9f]"
_KEY_SEGMENT = rf"(?:{_KEY_CHAR}|\.{_KEY_CHAR})+\.?"
INIT_KEY_PATTERN = rf"^{_KEY_SEGMENT}(?:/{_KEY_SEGMENT})*$"

JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
ModelAlias = Annotated[str, StringConstraints(pattern=MODEL_ALIAS_PATTERN)]
Mode = Literal["txt2img", "img2img"]
OutputFormat = Literal["png", "webp", "jpeg"]
# Field types shared with whatever else states or narrows them (per-model defaults, quotas, the bridge's bodies).
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
NegativePrompt = Annotated[str, StringConstraints(max_length=4000)]
ImageSide = Annotated[int, Field(ge=64, multiple_of=8)]
Steps = Annotated[int, Field(ge=1, le=150)]
GuidanceScale = Annotated[float, Field(ge=0, le=30)]
ImageCount = Annotated[int, Field(ge=1, le=8)]
SchedulerName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)]
# http or https with a host; whether the worker will call it is its allow-list's decision, not the contract's.
CallbackUrl = Annotated[
    str, StringConstraints(max_length=MAX_CALLBACK_URL_LENGTH, pattern=r"^https?://[^\s/?#]+[^\s]*$")
]


# The JSON Schema form of `_check_shape`'s mode rules, so that the generated schema says what the model enforces.
_MODE_RULES_SCHEMA: dict[str, JsonValue] = {
    "if": {"properties": {"mode": {"const": "img2img"}}, "required": ["mode"]},
    "then": {"required": ["init_image"], "properties": {"init_image": {"not": {"type": "null"}}}},
    "else": {"properties": {"init_image": {"type": "null"}, "strength": {"type": "null"}}},
}


class InitImageKey(BaseModel):
    """An init image in the bucket: `inputs/<job_id>/…` of this job, or `outputs/<job>/…` of the caller's own job."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=INIT_KEY_PATTERN)]


class InitImageData(BaseModel):
    """An init image sent inline as base64; the worker caps its decoded size."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    data: Annotated[str, StringConstraints(min_length=1)]


class GenerationRequest(BaseModel):
    """One txt2img or img2img job. Unknown fields are rejected, never ignored."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, json_schema_extra=_MODE_RULES_SCHEMA
    )

    schema_version: Literal[1]
    job_id: JobId
    mode: Mode
    model: ModelAlias = "default"
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: ImageSide = 512
    height: ImageSide = 512
    steps: Steps = 25
    guidance_scale: GuidanceScale = 7.5
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    num_images: ImageCount = 1
    scheduler: SchedulerName | None = None
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    init_image: InitImageKey | InitImageData | None = None
    output_format: OutputFormat = "png"
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_ENTRIES)] = Field(
        default_factory=dict
    )
    callback_url: CallbackUrl | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if self.mode == "img2img" and self.init_image is None:
            raise ValueError("img2img needs init_image")
        if self.mode == "txt2img" and (self.init_image is not None or self.strength is not None):
            raise ValueError("init_image and strength are for img2img only")
        if not math.isfinite(self.guidance_scale):
            raise ValueError("guidance_scale must be finite")
        return self

    @property
    def effective_strength(self) -> float:
        """The img2img strength, with the contract's default of 0.75."""
        return 0.75 if self.strength is None else self.strength
