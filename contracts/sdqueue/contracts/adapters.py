"""Adapters a request applies to its model: LoRA weights and textual-inversion embeddings, each pinned by sha256."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

MAX_ADAPTERS = 8
ADAPTER_KEY_PREFIX = "adapters/"
# A bucket object under `adapters/`: safe segments only (no `..`, no leading dot), a `.safetensors` file.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
ADAPTER_KEY_PATTERN = rf"^adapters/(?:{_SEGMENT}/){{0,3}}{_SEGMENT}\.safetensors$"
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# The prompt token an embedding binds; the angle brackets keep it clear of the tokenizer's own words.
EMBEDDING_TOKEN_PATTERN = r"^<[a-z0-9][a-z0-9_-]{0,31}>$"  # noqa: S105  # a prompt word, not a secret
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Where `sdqueue adapters put` stores a file: named by its own sha256, so the key alone pins the file.
_CONTENT_ADDRESSED_KEY = re.compile(r"^adapters/([0-9a-f]{64})\.safetensors$")

AdapterKind = Literal["lora", "embedding"]
AdapterKey = Annotated[str, StringConstraints(max_length=600, pattern=ADAPTER_KEY_PATTERN)]
AdapterName = Annotated[str, StringConstraints(pattern=ADAPTER_NAME_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
AdapterScale = Annotated[float, Field(ge=-4, le=4)]
EmbeddingToken = Annotated[str, StringConstraints(pattern=EMBEDDING_TOKEN_PATTERN)]

# The JSON Schema form of `_check_shape`, so that the generated schema says what the model enforces.
_RULES_SCHEMA: dict[str, JsonValue] = {
    "allOf": [
        {"oneOf": [{"required": ["key"]}, {"required": ["name"]}]},
        {
            "if": {"properties": {"kind": {"const": "embedding"}}, "required": ["kind"]},
            "then": {"required": ["token"]},
            "else": {"properties": {"token": {"type": "null"}}},
        },
    ]
}


class AdapterRef(BaseModel):
    """One adapter: a bucket object (`key`) or one of the worker's named adapters (`name`), whose file must hash
    to `sha256`. A LoRA is applied at `scale`; an embedding binds `token` in the prompts."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, json_schema_extra=_RULES_SCHEMA
    )

    key: AdapterKey | None = None
    name: AdapterName | None = None
    sha256: Sha256
    kind: AdapterKind = "lora"
    scale: AdapterScale = 1.0
    token: EmbeddingToken | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if (self.key is None) == (self.name is None):
            raise ValueError("an adapter has exactly one of key and name")
        if self.kind == "embedding" and self.token is None:
            raise ValueError("an embedding needs token")
        if self.kind == "lora" and self.token is not None:
            raise ValueError("token is for embeddings only")
        return self

    @property
    def source(self) -> str:
        """The key or name the adapter was asked by, as events and image parameters report it."""
        return self.key if self.key is not None else f"name:{self.name}"


class AppliedAdapter(BaseModel):
    """An adapter a job's images were generated with, as the succeeded event and the record report it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = None
    name: str | None = None
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    kind: AdapterKind
    scale: float
    token: str | None = None


class NamedAdapter(BaseModel):
    """One adapter of a worker's map, as its heartbeat announces it: what a request names and the hash it must sign."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: AdapterName
    sha256: Sha256
    kind: AdapterKind
    bytes: Annotated[int, Field(ge=0)]


def applied(ref: AdapterRef) -> AppliedAdapter:
    """The report of one requested adapter (everything but nothing secret: the request's own fields)."""
    return AppliedAdapter(
        key=ref.key, name=ref.name, sha256=ref.sha256, kind=ref.kind, scale=ref.scale, token=ref.token
    )


def content_addressed_key(sha256: str) -> str:
    """The bucket key of an adapter file stored under its own hash."""
    return f"{ADAPTER_KEY_PREFIX}{sha256}.safetensors"


def sha256_of_key(key: str) -> str | None:
    """The sha256 a content-addressed key names (`adapters/<sha256>.safetensors`), or None for any other key."""
    named = _CONTENT_ADDRESSED_KEY.match(key)
    return None if named is None else named.group(1)
