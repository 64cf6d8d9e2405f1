"""The bridge's HTTP bodies: what callers send and what they get back, with OpenAPI examples."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.config import JsonDict

from sdqueue.contracts import MAX_SEED, FamilyDefaults, HiresFix, ModelFamily, OutputFormat, TerminalEvent
from sdqueue.contracts.adapters import (
    MAX_ADAPTERS,
    AdapterKey,
    AdapterKind,
    AdapterName,
    AdapterScale,
    EmbeddingToken,
    Sha256,
)
from sdqueue.contracts.request import (
    MAX_MASK_BLUR_PX,
    MAX_PREVIEW_INTERVAL_S,
    GuidanceScale,
    ImageCount,
    Mode,
    NegativePrompt,
    Prompt,
    SchedulerName,
    Steps,
)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)]


class AdapterChoice(BaseModel):
    """An adapter a caller asks for: one of the workers' named adapters (`GET /v1/adapters`), whose sha256 and kind
    the bridge fills in, or a bucket object under `adapters/` with its sha256 (read from the file name of a key that
    `sdqueue adapters put` made, `adapters/<sha256>.safetensors`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: AdapterName | None = None
    key: AdapterKey | None = None
    sha256: Sha256 | None = None
    kind: AdapterKind | None = Field(default=None, description="A name's kind is the workers'; a key's is `lora`.")
    scale: AdapterScale = 1.0
    token: EmbeddingToken | None = Field(default=None, description="The prompt word an embedding binds.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.key is None) == (self.name is None):
            raise ValueError("an adapter has exactly one of key and name")
        return self


class GenerationParams(BaseModel):
    """The request fields a caller chooses (the bridge assigns `job_id`, `mode` and the init image key)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "default"
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] = 512
    height: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] = 512
    steps: Steps = 25
    guidance_scale: GuidanceScale = 7.5
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    num_images: ImageCount = 1
    scheduler: SchedulerName | None = None
    output_format: OutputFormat = "png"
    previews: bool = False
    preview_interval_s: Annotated[float, Field(gt=0, le=MAX_PREVIEW_INTERVAL_S)] | None = None
    adapters: Annotated[list[AdapterChoice], Field(max_length=MAX_ADAPTERS)] = Field(
        default_factory=list, description="LoRAs and embeddings; in a multipart form, this list as a JSON string."
    )

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters_from_form(cls, value: object) -> object:
        """A form field is text: there the list travels as JSON."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError("adapters must be a JSON list") from exc
        return value


class Txt2ImgBody(GenerationParams):
    """`POST /v1/txt2img`: the generation request's fields, without `job_id`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "a dog with a hat", "width": 512, "height": 512, "steps": 25, "seed": 42},
                {"prompt": "a dog with a hat", "hires": {"scale": 2, "steps": 20}, "previews": True},
            ]
        }
    )

    hires: HiresFix | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] = Field(default_factory=dict)


class Img2ImgForm(GenerationParams):
    """`POST /v1/img2img` form fields (the `image` file travels next to them)."""

    # The file part arrives in the same form data, so other fields cannot be forbidden here.
    model_config = ConfigDict(extra="ignore")

    strength: Annotated[float, Field(gt=0, le=1)] = 0.75


class InpaintForm(GenerationParams):
    """`POST /v1/inpaint` form fields (the `image` and `mask` files travel next to them)."""

    model_config = ConfigDict(extra="ignore")

    strength: Annotated[float, Field(gt=0, le=1)] = 1.0
    mask_blur: Annotated[int, Field(ge=0, le=MAX_MASK_BLUR_PX)] = 0


class CompatImageForm(BaseModel):
    """The original API's `POST /generar-imagen-imagen` form fields (the `imagen` file travels next to them)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None


class JobLinks(BaseModel):
    """Where to follow a job."""

    status: str
    wait: str
    events: str
    cancel: str


EXAMPLE_JOB_ID = "0e3c1a2b9f0-4f1c9d0c2b7e4a58a1d7c3e2b9f00a11"
EXAMPLE_LINKS: JsonDict = {
    "status": f"/v1/jobs/{EXAMPLE_JOB_ID}",
    "wait": f"/v1/jobs/{EXAMPLE_JOB_ID}/wait",
    "events": f"/v1/jobs/{EXAMPLE_JOB_ID}/events",
    "cancel": f"/v1/jobs/{EXAMPLE_JOB_ID}/cancel",
}


class JobAccepted(BaseModel):
    """The answer to a submitted job: `202`, its id and links."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": EXAMPLE_JOB_ID,
                    "status": "queued",
                    "links": EXAMPLE_LINKS,
                }
            ]
        }
    )

    job_id: str
    status: Literal["queued"] = "queued"
    links: JobLinks


class Progress(BaseModel):
    """The latest finished denoising step of a running job."""

    step: int
    steps: int


class JobStatus(BaseModel):
    """A job as the caller sees it: queued, running (with progress) or its terminal record in `result`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": EXAMPLE_JOB_ID,
                    "status": "running",
                    "mode": "txt2img",
                    "prompt": "a dog with a hat",
                    "created_at": "2026-01-01T12:00:00Z",
                    "progress": {"step": 10, "steps": 25},
                    "result": None,
                    "links": EXAMPLE_LINKS,
                }
            ]
        }
    )

    job_id: str
    status: JobState
    mode: Mode
    prompt: str
    created_at: AwareDatetime
    progress: Progress | None = None
    result: TerminalEvent | None = None
    links: JobLinks


class ModelInfo(BaseModel):
    """One model alias the fleet serves."""

    alias: str
    family: ModelFamily | None = Field(description="Null while no worker has loaded it, or workers disagree.")
    defaults: FamilyDefaults | None = Field(description="What a request that leaves them out gets (the family's).")
    schedulers: list[SchedulerName] | None = Field(description="Names every serving worker accepts; null if unknown.")
    workers: int = Field(description="Workers that announced it in their latest heartbeat.")


class ModelList(BaseModel):
    """The model aliases live workers announce in their heartbeats."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": [
                        {
                            "alias": "default",
                            "family": "sd1",
                            "defaults": {"width": 512, "height": 512, "guidance_scale": 7.5},
                            "schedulers": ["ddim", "euler", "pndm"],
                            "workers": 2,
                        }
                    ]
                }
            ]
        }
    )

    models: list[ModelInfo]


class AdapterInfo(BaseModel):
    """One named adapter of the live workers: what a request names, and which models' workers hold it."""

    name: str
    sha256: str
    kind: AdapterKind
    bytes: int
    models: list[str] = Field(description="Aliases served by workers that hold this file under this name.")
    workers: int = Field(description="Workers that announced it in their latest heartbeat.")


class AdapterList(BaseModel):
    """The named adapters live workers announce in their heartbeats; a name held as two files is listed twice."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "adapters": [
                        {
                            "name": "watercolor",
                            "sha256": "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
                            "kind": "lora",
                            "bytes": 151_000_000,
                            "models": ["default"],
                            "workers": 2,
                        }
                    ]
                }
            ]
        }
    )

    adapters: list[AdapterInfo]


class JobList(BaseModel):
    """The caller's recent jobs, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"jobs": []}]})

    jobs: list[JobStatus]


class CancelAccepted(BaseModel):
    """The cancel command was sent to the workers; the job's terminal event will say `cancelled`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"job_id": "0e3c1a2b9f0-4f1c", "status": "cancelling"}]})

    job_id: str
    status: Literal["cancelling"] = "cancelling"


class TokenResponse(BaseModel):
    """The OAuth2 password flow's answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"access_token": "eyJhbGciOiJIUzI1NiJ9...", "token_type": "bearer"}]}
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # the OAuth2 token type, not a secret
    expires_in: int


class Health(BaseModel):
    """Liveness or readiness, with each dependency's state."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "checks": {"broker": True, "storage": True}}]}
    )

    status: Literal["ok"]
    checks: dict[str, bool] = Field(default_factory=dict)


class TextoBody(BaseModel):
    """The original API's `POST /generar-imagen-texto` body."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"texto": "a dog with a hat"}]})

    texto: Prompt


class SignupBody(BaseModel):
    """The original API's `POST /registrar_usuario` body."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={"examples": [{"correo": "ana@example.com", "contraseña": "correct horse battery"}]},
    )

    correo: Annotated[str, StringConstraints(min_length=3, max_length=64)]
    contrasena: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(alias="contraseña")


class SignupDone(BaseModel):
    """A user was created."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"usuario": "ana@example.com", "creado": True}]})

    usuario: str
    creado: bool = True
