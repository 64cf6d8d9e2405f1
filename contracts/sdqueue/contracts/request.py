"""The generation request: the JSON body a client publishes to `sdqueue.requests`."""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

from sdqueue.contracts.adapters import MAX_ADAPTERS, AdapterRef

SCHEMA_VERSION: Literal[1] = 1
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MODEL_ALIAS_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_SEED = 2**32 - 1
MAX_METADATA_ENTRIES = 16
MAX_CALLBACK_URL_LENGTH = 2048
MAX_MASK_BLUR_PX = 64
MAX_PREVIEW_INTERVAL_S = 60.0
# The contract's default strength per mode that takes one: img2img keeps most of the init image, inpaint repaints.
DEFAULT_STRENGTH: dict[str, float] = {"img2img": 0.75, "inpaint": 1.0}
# An object key: segments joined by single slashes, no leading slash, no `..` anywhere, no control characters.
_KEY_CHAR = r"[^/.\x00-\x1f\x7f-\x9f]"
_KEY_SEGMENT = rf"(?:{_KEY_CHAR}|\.{_KEY_CHAR})+\.?"
INIT_KEY_PATTERN = rf"^{_KEY_SEGMENT}(?:/{_KEY_SEGMENT})*$"

JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
ModelAlias = Annotated[str, StringConstraints(pattern=MODEL_ALIAS_PATTERN)]
Mode = Literal["txt2img", "img2img", "inpaint"]
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
_ABSENT: JsonValue = {"type": "null"}
_PRESENT: JsonValue = {"not": {"type": "null"}}


def _when_mode(mode: str, then: dict[str, JsonValue]) -> JsonValue:
    return {"if": {"properties": {"mode": {"const": mode}}, "required": ["mode"]}, "then": then}


_MODE_RULES_SCHEMA: dict[str, JsonValue] = {
    "allOf": [
        _when_mode(
            "txt2img",
            {"properties": {name: _ABSENT for name in ("init_image", "strength", "mask_image", "mask_blur")}},
        ),
        _when_mode(
            "img2img",
            {
                "required": ["init_image"],
                "properties": {"init_image": _PRESENT, "mask_image": _ABSENT, "mask_blur": _ABSENT, "hires": _ABSENT},
            },
        ),
        _when_mode(
            "inpaint",
            {
                "required": ["init_image", "mask_image"],
                "properties": {"init_image": _PRESENT, "mask_image": _PRESENT, "hires": _ABSENT},
            },
        ),
        {
            "if": {"not": {"properties": {"previews": {"const": True}}, "required": ["previews"]}},
            "then": {"properties": {"preview_interval_s": _ABSENT}},
        },
    ]
}


class InitImageKey(BaseModel):
    """An init image in the bucket: `inputs/<job_id>/…` of this job, or `outputs/<job>/…` of the caller's own job."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=INIT_KEY_PATTERN)]


class InitImageData(BaseModel):
    """An init image sent inline as base64; the worker caps its decoded size."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    data: Annotated[str, StringConstraints(min_length=1)]


class HiresFix(BaseModel):
    """A second pass for txt2img: upscale by `scale` (Lanczos), then refine with img2img at the larger size."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    scale: Annotated[float, Field(ge=1, le=4)]
    steps: Steps
    strength: Annotated[float, Field(gt=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _check_refine_steps(self) -> Self:
        if int(self.steps * self.strength) < 1:
            raise ValueError("hires runs steps x strength refine steps, which must be at least 1")
        return self


def hires_size(width: int, height: int, *, scale: float) -> tuple[int, int]:
    """The final size of a hires job: each side times `scale`, rounded down to a multiple of 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


class GenerationRequest(BaseModel):
    """One txt2img, img2img or inpaint job. Unknown fields are rejected, never ignored."""

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
    mask_image: InitImageKey | InitImageData | None = None
    mask_blur: Annotated[int, Field(ge=0, le=MAX_MASK_BLUR_PX)] | None = None
    hires: HiresFix | None = None
    previews: bool = False
    preview_interval_s: Annotated[float, Field(gt=0, le=MAX_PREVIEW_INTERVAL_S)] | None = None
    output_format: OutputFormat = "png"
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_ENTRIES)] = Field(
        default_factory=dict
    )
    callback_url: CallbackUrl | None = None
    adapters: Annotated[list[AdapterRef], Field(max_length=MAX_ADAPTERS)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        problem = _mode_problem(self) or _preview_problem(self) or _adapter_problem(self)
        if problem is not None:
            raise ValueError(problem)
        if not math.isfinite(self.guidance_scale):
            raise ValueError("guidance_scale must be finite")
        return self

    @property
    def effective_strength(self) -> float:
        """The img2img or inpaint strength, with the contract's default for the mode (0.75 and 1.0)."""
        return DEFAULT_STRENGTH.get(self.mode, 0.75) if self.strength is None else self.strength

    @property
    def effective_mask_blur(self) -> int:
        """The inpaint mask blur in pixels, 0 when unset."""
        return self.mask_blur or 0

    @property
    def output_size(self) -> tuple[int, int]:
        """Width and height of the images the job returns: after the hires pass, if there is one."""
        if self.hires is None:
            return self.width, self.height
        return hires_size(self.width, self.height, scale=self.hires.scale)


def _mode_problem(request: GenerationRequest) -> str | None:
    """Which field the request's mode needs or forbids, or None when the fields fit the mode."""
    has_mask_fields = request.mask_image is not None or request.mask_blur is not None
    if request.mode == "txt2img" and (request.init_image is not None or request.strength is not None):
        return "init_image and strength are for img2img and inpaint only"
    if request.mode != "txt2img" and request.init_image is None:
        return f"{request.mode} needs init_image"
    if request.mode != "inpaint" and has_mask_fields:
        return "mask_image and mask_blur are for inpaint only"
    if request.mode == "inpaint" and request.mask_image is None:
        return "inpaint needs mask_image"
    if request.mode != "txt2img" and request.hires is not None:
        return "hires is for txt2img only"
    return None


def _preview_problem(request: GenerationRequest) -> str | None:
    if request.preview_interval_s is not None and not request.previews:
        return "preview_interval_s needs previews: true"
    return None


def _adapter_problem(request: GenerationRequest) -> str | None:
    """Refuse an adapter listed twice and two embeddings binding one token (which one would win is unclear)."""
    sources = [adapter.source for adapter in request.adapters]
    if len(set(sources)) != len(sources):
        return "an adapter is listed twice"
    tokens = [adapter.token for adapter in request.adapters if adapter.token is not None]
    if len(set(tokens)) != len(tokens):
        return "two embeddings bind the same token"
    return None
