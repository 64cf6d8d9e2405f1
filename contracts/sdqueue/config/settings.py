"""The one settings object. Built by `load_settings()` at a process entry point and passed down, never global."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdqueue.contracts.adapters import ADAPTER_NAME_PATTERN, MAX_ADAPTERS
from sdqueue.contracts.request import (
    MAX_PREVIEW_INTERVAL_S,
    MODEL_ALIAS_PATTERN,
    GuidanceScale,
    ImageSide,
    NegativePrompt,
    SchedulerName,
    Steps,
)
from sdqueue.contracts.tokens import AUDIENCE
from sdqueue.contracts.topology import DEFAULT_MODEL_ALIAS

log = logging.getLogger(__name__)

ENV_PREFIX = "SDQUEUE_"
MIN_HMAC_SECRET_BYTES = 32
# Every secret in docker/env.example contains this; a process refuses to start with one.
PLACEHOLDER_MARKER = "change-me"
Algorithm = Literal["HS256", "HS384", "HS512", "EdDSA", "ES256", "RS256"]
# A webhook allow-list entry: a DNS name (IDNA ASCII form) or IPv4 address, or a bracketed IPv6 one; optional port.
_HOST_ENTRY = re.compile(r"(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?")


def _not_placeholder(value: SecretStr) -> SecretStr:
    """Refuse the example values of docker/env.example: they are public, whatever their length."""
    if PLACEHOLDER_MARKER in value.get_secret_value().lower():
        raise ValueError(f"is still a placeholder ({PLACEHOLDER_MARKER}…): set a random secret")
    return value


def _signing_key(value: SecretStr) -> SecretStr:
    """Refuse an HMAC key too short to resist guessing, or a placeholder."""
    if len(value.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_HMAC_SECRET_BYTES} bytes")
    return _not_placeholder(value)


# A secret someone else issued (an S3 secret key): whatever its length, never a placeholder.
Secret = Annotated[SecretStr, AfterValidator(_not_placeholder)]
# A secret sdqueue signs or verifies with (HS256 tokens, webhooks): at least 32 bytes, never a placeholder.
SigningSecret = Annotated[SecretStr, AfterValidator(_signing_key)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Group):
    """RabbitMQ connection and delivery behaviour."""

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"), description="AMQP URL, credentials included."
    )
    connect_timeout_s: PositiveFloat = Field(default=10.0, description="Limit for one connection attempt.")
    publish_timeout_s: PositiveFloat = Field(default=10.0, description="Limit for one publish and its confirm.")
    heartbeat_s: Annotated[int, Field(ge=0)] = Field(default=60, description="AMQP heartbeat; 0 disables it.")
    prefetch: PositiveInt = Field(
        default=16,
        description="Unacked requests a worker holds at once; keep it above `fairness.max_per_caller`.",
    )
    delivery_limit: PositiveInt = Field(
        default=3, description="Retries (and redeliveries) before a request ends `delivery_limit_exceeded`."
    )
    worker_users: tuple[str, ...] = Field(
        default=("guest",),
        min_length=1,
        description="Broker user names of the workers: clients and the CLI accept an event or reply only when its "
        "AMQP `user_id` (set by the worker, checked by the broker) is one of them. Give each worker its own user in "
        "production (docs/operations.md); the default fits the dev stack's `guest`.",
    )
    retry_backoff_s: PositiveFloat = Field(
        default=0.5,
        description="Wait in the retry queue before a transient failure's first retry; it doubles each retry.",
    )
    max_retry_backoff_s: PositiveFloat = Field(default=10.0, description="Longest wait before one retry.")

    @field_validator("url")
    @classmethod
    def _password_set(cls, value: SecretStr) -> SecretStr:
        password = urlsplit(value.get_secret_value()).password
        if password:
            _not_placeholder(SecretStr(unquote(password)))
        return value

    @property
    def user_name(self) -> str:
        """The broker user this process connects as (the AMQP URL's user; `guest` when it names none)."""
        return unquote(urlsplit(self.url.get_secret_value()).username or "guest")


class S3Settings(_Group):
    """The S3-compatible bucket that holds init images, outputs and result records."""

    endpoint_url: str | None = Field(default=None, description="Endpoint; unset means AWS S3.")
    region: str = Field(default="us-east-1", description="Signing region.")
    bucket: str = Field(default="sdqueue", description="Bucket name.")
    access_key_id: str | None = Field(default=None, description="Access key; unset uses boto3's default chain.")
    secret_access_key: Secret | None = Field(default=None, description="Secret key paired with the access key.")
    url_ttl_s: PositiveInt = Field(default=3600, description="Lifetime of presigned image URLs in events.")
    public_base_url: str | None = Field(
        default=None, description="If set, image URLs are this base plus the key instead of presigned URLs."
    )
    timeout_s: PositiveFloat = Field(default=10.0, description="Connect and read timeout of one S3 call.")
    max_attempts: PositiveInt = Field(default=3, description="boto3 retry attempts for one S3 call.")
    outage_budget_s: Annotated[float, Field(ge=0)] = Field(
        default=120.0,
        description="How long a job waits out a storage outage in place before it is requeued (burning a delivery).",
    )


class IssuerKeys(_Group):
    """The keys of one issuer: they verify that issuer's tokens and no other's."""

    hs256_secret: SigningSecret | None = Field(default=None, description="The issuer's HMAC secret, at least 32 bytes.")
    jwks_file: Path | None = Field(default=None, description="JWKS file with the issuer's public keys, by `kid`.")


class AuthSettings(_Group):
    """How request tokens are verified (worker) and minted (trusted producers, dev CLI)."""

    issuers: tuple[str, ...] = Field(
        default=("sdqueue",),
        min_length=1,
        description="The default issuer first (its keys are `hs256_secret` and `jwks_file`; the CLI and the bridge "
        "mint as it); any other must have its own `issuer_keys` entry.",
    )
    audience: str = Field(default=AUDIENCE, description="Required `aud`.")
    algorithms: tuple[Algorithm, ...] = Field(default=("HS256",), min_length=1, description="Allow-listed algorithms.")
    hs256_secret: SigningSecret | None = Field(
        default=None, description="HMAC secret of the default issuer, at least 32 bytes."
    )
    jwks_file: Path | None = Field(
        default=None, description="JWKS file with the default issuer's public keys, picked by `kid`."
    )
    issuer_keys: dict[str, IssuerKeys] = Field(
        default_factory=dict,
        description="Keys of more issuers, as JSON: "
        '`{"partner": {"jwks_file": "/keys/partner.json"}}`. A key verifies only its own issuer\'s tokens.',
    )
    leeway_s: Annotated[float, Field(ge=0, le=300)] = Field(
        default=30.0, description="Clock skew allowed on `exp`, `nbf` and `iat`, at most 300 s."
    )
    token_ttl_s: PositiveInt = Field(default=3600, description="`exp` of tokens minted by the CLI: how long to wait.")

    @model_validator(mode="after")
    def _keys_per_issuer(self) -> Self:
        missing = [issuer for issuer in self.issuers[1:] if issuer not in self.issuer_keys]
        if missing:
            raise ValueError(f"issuers {missing} have no `issuer_keys` entry (only the first uses the global keys)")
        return self

    def issuer_key_settings(self) -> dict[str, IssuerKeys]:
        """Every accepted issuer with its keys: the default issuer's are `hs256_secret` and `jwks_file`."""
        default = IssuerKeys(hs256_secret=self.hs256_secret, jwks_file=self.jwks_file)
        return {self.issuers[0]: default, **self.issuer_keys}


class ModelDefaults(_Group):
    """One alias's defaults for the request fields a body leaves out; values a body carries always win."""

    width: ImageSide | None = Field(default=None, description="Image width.")
    height: ImageSide | None = Field(default=None, description="Image height.")
    steps: Steps | None = Field(default=None, description="Denoising steps.")
    guidance_scale: GuidanceScale | None = Field(default=None, description="Guidance scale.")
    scheduler: SchedulerName | None = Field(default=None, description="Scheduler name (one the worker lists).")
    negative_prompt: NegativePrompt | None = Field(default=None, description="Negative prompt.")


class LimitSettings(_Group):
    """Caps the worker enforces before any heavy work."""

    max_pixels: PositiveInt = Field(default=1024 * 1024, description="Largest width x height of one image.")
    max_steps: Annotated[int, Field(ge=1, le=150)] = Field(default=150, description="Most denoising steps.")
    max_images: Annotated[int, Field(ge=1, le=8)] = Field(default=8, description="Most images in one job.")
    max_body_bytes: PositiveInt = Field(default=8 * 1024 * 1024, description="Largest request body.")
    max_inline_image_bytes: PositiveInt = Field(default=4 * 1024 * 1024, description="Largest decoded inline image.")
    max_init_image_bytes: PositiveInt = Field(default=16 * 1024 * 1024, description="Largest init image by key.")
    max_init_image_pixels: PositiveInt = Field(
        default=4096 * 4096, description="Largest decoded init image; bigger is a decompression bomb."
    )
    max_generate_s: PositiveFloat = Field(
        default=600.0, description="Time budget of one job's generation; past it the job fails `limits_exceeded`."
    )
    max_adapters: Annotated[int, Field(ge=0, le=MAX_ADAPTERS)] = Field(
        default=4, description="Most adapters (LoRA, embeddings) in one request; 0 refuses adapters."
    )
    max_adapter_bytes: PositiveInt = Field(
        default=512 * 1024 * 1024, description="Largest adapter file, read by key or from the adapter map."
    )
    min_preview_interval_s: Annotated[float, Field(gt=0, le=MAX_PREVIEW_INTERVAL_S)] = Field(
        default=0.5,
        description="Shortest `preview_interval_s` a request may ask for (also the interval when it names none); "
        "shorter is `invalid_request`. Each preview costs a latent decode on the generation thread.",
    )


class RuntimeSettings(_Group):
    """Where and how the model runs."""

    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")] = Field(
        default="auto", description="`auto` picks CUDA when present, else CPU."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="`auto`: float16 on CUDA, float32 on CPU."
    )
    threads: PositiveInt | None = Field(default=None, description="torch CPU threads; unset keeps torch's choice.")
    attention_slicing: bool = Field(default=False, description="Trade speed for memory on small GPUs.")
    channels_last: bool = Field(default=False, description="UNet and VAE in channels-last memory format.")
    fuse_qkv: bool = Field(default=False, description="Fuse attention Q/K/V projections into one matmul.")
    vae_slicing: bool = Field(default=False, description="Decode a batch one image at a time (less peak memory).")
    vae_tiling: bool = Field(default=False, description="Decode large images in tiles (less peak memory).")
    compile_mode: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        default="off", description="torch.compile the UNet; the warm-up pays the compile before the worker is ready."
    )
    warmup_steps: Annotated[int, Field(ge=0, le=50)] = Field(
        default=2, description="Steps of the warm-up generation run before the worker is ready; 0 skips it."
    )
    warmup_size_px: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = Field(
        default=512, description="Width and height of the warm-up generation (compiled shapes are per size)."
    )
    model_memory_mb: PositiveInt | None = Field(
        default=None,
        description="Budget for loaded pipelines' weights; over it the least recently used model is unloaded. "
        "Unset: every served model stays loaded.",
    )
    adapter_memory_mb: PositiveInt = Field(
        default=1024,
        description="Budget for loaded adapters' weights per model; over it the least recently used is unloaded "
        "(and loaded again on its next use).",
    )
    lora_hotswap_rank: PositiveInt = Field(
        default=64,
        description="With `compile_mode` on: the highest LoRA rank the compiled UNet takes. Its one LoRA slot is "
        "padded to this rank before the compile, so a LoRA is swapped in without recompiling; a LoRA of a higher rank "
        "is an invalid request, and every call pays for this rank (the padding is zeros).",
    )
    mixed_lora_batches: bool = Field(
        default=False,
        description="Let jobs with one LoRA each (different LoRAs, one scale) share a batch, each image through its "
        "own LoRA (PEFT's per-sample adapter names); off: a batch holds one adapter set. Not with `compile_mode`, "
        "whose one LoRA slot holds one LoRA at a time. See docs/benchmarks.md.",
    )

    @model_validator(mode="after")
    def _mixed_loras_need_eager_mode(self) -> Self:
        """A compiled UNet swaps one LoRA into its slot (hotswap), so it cannot run several in one call."""
        if self.mixed_lora_batches and self.compile_mode != "off":
            raise ValueError("`mixed_lora_batches` needs `compile_mode` off (a compiled UNet holds one LoRA at a time)")
        return self


class BatchSettings(_Group):
    """Micro-batching: compatible jobs already prefetched share one pipeline call (raise `broker.prefetch` too)."""

    max_images: Annotated[int, Field(ge=1, le=64)] = Field(
        default=8, description="Most images in one pipeline call; 1 turns batching off."
    )
    max_wait_s: Annotated[float, Field(ge=0, le=5)] = Field(
        default=0.01, description="How long a batch waits for more compatible jobs before it runs."
    )
    max_pixel_steps: PositiveInt = Field(
        default=8 * 512 * 512 * 50, description="Budget of width x height x steps summed over a batch's images."
    )


class FairnessSettings(_Group):
    """Fair intake: a caller's flood waits in its model's overflow lane instead of in front of everyone else."""

    enabled: bool = Field(default=True, description="Move jobs over a caller's share to the overflow lane.")
    max_per_caller: PositiveInt = Field(
        default=8, description="Main-lane jobs one caller may hold at this worker; its others go to the overflow lane."
    )
    overflow_prefetch: PositiveInt = Field(default=8, description="Overflow-lane jobs a worker holds at once.")
    promote_after_s: PositiveFloat = Field(
        default=60.0,
        description="A job held this long runs next whatever its lane, so the overflow lane never starves.",
    )


class BridgeSettings(_Group):
    """The HTTP bridge: where it listens, how it signs its callers' access tokens, and its edge limits."""

    host: str = Field(default="127.0.0.1", description="Address the bridge binds to.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(default=8000, description="Port the bridge listens on.")
    processes: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1,
        description="uvicorn worker processes serving the bridge's port. Above 1, `/metrics` sums every process "
        "(Prometheus multiprocess mode) and the database must be one they share (PostgreSQL for several hosts).",
    )
    shutdown_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="At shutdown, how long open requests and event streams may take before they are cut "
        "(uvicorn's `timeout_graceful_shutdown`).",
    )
    token_secret: SigningSecret | None = Field(
        default=None,
        description="HMAC secret (at least 32 bytes) that signs bridge access tokens; not `auth.hs256_secret`.",
    )
    access_token_ttl_s: PositiveInt = Field(default=3600, description="Lifetime of a bridge access token.")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the bridge's database (users, jobs, failed sign-ins), e.g. "
        "`postgresql+asyncpg://user:password@host/sdqueue` for several bridge processes or hosts; unset: SQLite at "
        "`<state_dir>/bridge.db`. Create or migrate it with `sdqueue bridge db upgrade`.",
    )
    database_timeout_s: PositiveFloat = Field(
        default=10.0, description="Limit for connecting to the database and for one statement."
    )
    hash_threads: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2,
        description="Threads hashing and verifying passwords (argon2: 64 MiB and tens of milliseconds of a core "
        "each), off the event loop, per bridge process. It bounds parallel sign-ins, and how many parallel guesses "
        "a process lets past a lockout.",
    )
    sign_in_free_failures: Annotated[int, Field(ge=0)] = Field(
        default=5,
        description="Failed sign-ins per user name within `sign_in_window_s` before further attempts are locked "
        "out (`429` with `Retry-After`), the lockout doubling with each failure.",
    )
    sign_in_free_failures_per_address: Annotated[int, Field(ge=0)] = Field(
        default=20,
        description="Failed sign-ins per client address (any user names) within `sign_in_window_s` before each "
        "further failure from it locks the address out, as `sign_in_free_failures` does for a name.",
    )
    sign_in_window_s: PositiveInt = Field(default=900, description="How long a failed sign-in counts.")
    sign_in_backoff_s: PositiveFloat = Field(
        default=1.0, description="Lockout after the first failure past the free ones; it doubles with each further one."
    )
    sign_in_max_backoff_s: PositiveFloat = Field(
        default=300.0, description="Longest lockout, counted from the latest failure."
    )
    signups_per_address: PositiveInt = Field(
        default=5, description="Sign-ups one client address may make within `signup_window_s`."
    )
    signup_window_s: PositiveInt = Field(default=3600, description="How long a sign-up counts against its address.")
    allow_signup: bool = Field(default=False, description="Let anyone create a user with `POST /registrar_usuario`.")
    min_password_length: PositiveInt = Field(default=8, description="Shortest password sign-up accepts.")
    max_upload_bytes: PositiveInt = Field(default=8 * 1024 * 1024, description="Largest init image upload.")
    max_body_bytes: PositiveInt = Field(
        default=64 * 1024,
        description="Largest JSON or form body of a route that takes no image, counted as it streams.",
    )
    max_streams_per_user: PositiveInt = Field(
        default=4, description="Event streams and waits one user may hold open at once, per bridge process."
    )
    max_wait_s: PositiveFloat = Field(default=300.0, description="Longest a `wait` or compatibility call blocks.")
    job_wait_ttl_s: PositiveInt = Field(
        default=3600, description="`exp` of the per-message tokens the bridge mints: how long a job may stay queued."
    )
    recent_jobs: Annotated[int, Field(ge=1, le=1000)] = Field(default=20, description="Jobs `GET /v1/jobs` lists.")
    progress_cache_size: PositiveInt = Field(default=10_000, description="Jobs whose latest progress is cached.")
    compat_width: Annotated[int, Field(ge=64, multiple_of=8)] = Field(
        default=512, description="Width of images from the compatibility routes."
    )
    compat_height: Annotated[int, Field(ge=64, multiple_of=8)] = Field(
        default=512, description="Height of images from the compatibility routes."
    )
    compat_steps: Annotated[int, Field(ge=1, le=150)] = Field(
        default=25, description="Denoising steps of the compatibility routes."
    )
    readiness_timeout_s: PositiveFloat = Field(default=5.0, description="Limit of each `/readyz` probe.")
    access_log: bool = Field(
        default=False,
        description="Log one line per HTTP request (uvicorn's access log). Off by default: a line costs about an "
        "eighth of the bridge's CPU per accepted job (docs/benchmarks.md), and `/metrics` counts requests by route "
        "and status; server errors are logged either way.",
    )


class WebhookSettings(_Group):
    """Signed completion webhooks: which `callback_url` hosts are allowed, and how the relay delivers and retries."""

    secret: SigningSecret | None = Field(
        default=None,
        description="HMAC-SHA256 key (at least 32 bytes) that signs every webhook; receivers verify with it.",
    )
    issuer_secrets: dict[str, SigningSecret] = Field(
        default_factory=dict,
        description="Signing secret (at least 32 bytes) per issuer, as JSON: webhooks of a job whose owner's `iss` is "
        "listed are signed with that issuer's secret, so one receiver cannot forge webhooks to another issuer's; "
        "other issuers' fall back to `secret`.",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description=(
            "`host` (the scheme's default port only) or `host:port` entries a `callback_url` may name, IPv6 in "
            "brackets; empty refuses every callback (`forbidden`)."
        ),
    )
    allow_private_networks: bool = Field(
        default=False,
        description=(
            "Let allowed host names resolve to private, loopback or link-local addresses; IP literals in "
            "`allowed_hosts` are always allowed."
        ),
    )
    timeout_s: PositiveFloat = Field(default=10.0, description="Limit of one POST, from connect to response.")
    max_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        default=8, description="POSTs per webhook before it is dead-lettered to `sdqueue.dead`."
    )
    backoff_s: PositiveFloat = Field(default=1.0, description="Delay before the first retry; it doubles each time.")
    max_backoff_s: PositiveFloat = Field(default=60.0, description="Longest delay between two attempts.")
    relay: bool = Field(
        default=True, description="Deliver webhooks inside the worker; false: run `sdqueue webhooks relay` instead."
    )
    prefetch: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=64, description="Webhooks one relay delivers (and retries) at once."
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        entries = tuple(entry.strip().lower() for entry in value)
        for entry in entries:
            if not _HOST_ENTRY.fullmatch(entry):
                raise ValueError(f"{entry!r} is not `host` or `host:port` (IPv6 in brackets)")
        return entries

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> Self:
        if self.allowed_hosts and self.secret is None:
            raise ValueError("allowed_hosts needs a secret to sign webhooks with")
        return self


class Settings(BaseSettings):
    """Everything an sdqueue process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid", case_sensitive=False
    )

    state_dir: Path = Field(default=Path(".sdqueue"), description="Local state: built models, dev servers' data.")
    worker_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="Worker name in events and logs."
    )
    model: str | None = Field(default=None, description="Hub id or folder of the `default` model alias.")
    models: dict[Annotated[str, Field(pattern=MODEL_ALIAS_PATTERN)], str] = Field(
        default_factory=dict, description="More aliases: alias -> Hub id or folder."
    )
    model_defaults: dict[Annotated[str, Field(pattern=MODEL_ALIAS_PATTERN)], ModelDefaults] = Field(
        default_factory=dict,
        description="Per-alias defaults for fields a request leaves out, as JSON: "
        '`{"xl": {"width": 1024, "height": 1024, "steps": 30, "scheduler": "dpmpp_2m"}}`.',
    )
    adapters: dict[Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)], Path] = Field(
        default_factory=dict,
        description="Named adapters a request may ask for by `name`: name -> local safetensors file "
        "(its sha256 is checked on every load against the request's).",
    )
    shutdown_grace_s: PositiveFloat = Field(default=30.0, description="Time in-flight jobs get on SIGTERM.")
    heartbeat_interval_s: PositiveFloat = Field(
        default=10.0, description="Seconds between the worker's heartbeats on `sdqueue.events` (`sdqueue models`)."
    )
    health_port: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        default=None, description="Serve /healthz and /readyz on 127.0.0.1 at this port (0: any free port)."
    )
    health_host: str = Field(default="127.0.0.1", description="Address the health endpoint binds to.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object per line, with `job_id` on every job's lines."
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchSettings = Field(default_factory=BatchSettings)
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @property
    def tiny_model_dir(self) -> Path:
        """Where the offline tiny model is built when no model is configured."""
        return self.state_dir / "models" / "tiny"

    def model_sources(self) -> dict[str, str]:
        """Map each served alias to its source; with nothing configured, `default` is the tiny model."""
        sources = dict(self.models)
        if self.model is not None:
            sources[DEFAULT_MODEL_ALIAS] = self.model
        if not sources:
            sources[DEFAULT_MODEL_ALIAS] = str(self.tiny_model_dir)
        return sources


def load_settings() -> Settings:
    """Build the settings from the environment, warning about `SDQUEUE_*` variables that no field reads."""
    for name in unknown_variables(os.environ):
        log.warning("ignoring %s: no setting has that name", name)
    return Settings()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """List the `SDQUEUE_*` variables that name no setting (pydantic-settings ignores them silently)."""
    known = _known_names()
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        head, _, tail = upper.removeprefix(ENV_PREFIX).partition("__")
        if head not in known or (tail and tail.split("__")[0] not in known[head] and known[head] != {"*"}):
            unknown.append(name)
    return sorted(unknown)


def _known_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for field_name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names[field_name.upper()] = {sub.upper() for sub in annotation.model_fields}
        elif field_name in {"models", "model_defaults"}:
            names[field_name.upper()] = {"*"}
        else:
            names[field_name.upper()] = set()
    return names


def to_environment(settings: Settings) -> dict[str, str]:
    """The `SDQUEUE_*` variables that rebuild these settings in a child process (secrets included; `worker_name`
    left out so each child names itself)."""
    env: dict[str, str] = {}
    for name, value in settings:
        if name == "worker_name":
            continue
        if isinstance(value, BaseModel):
            for sub_name, sub_value in value:
                _put(env, f"{ENV_PREFIX}{name}__{sub_name}".upper(), sub_value)
        else:
            _put(env, f"{ENV_PREFIX}{name}".upper(), value)
    return env


def child_environment(settings: Settings, *, base: Mapping[str, str]) -> dict[str, str]:
    """A child process's whole environment: `base` without its `SDQUEUE_*` variables, plus those that rebuild
    `settings`, so the child loads exactly these settings and no stale variable of the parent's."""
    env = {key: value for key, value in base.items() if not key.upper().startswith(ENV_PREFIX)}
    env.update(to_environment(settings))
    return env


def _put(env: dict[str, str], key: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, SecretStr):
        env[key] = value.get_secret_value()
    elif isinstance(value, str | Path):
        env[key] = str(value)
    else:
        env[key] = json.dumps(_plain(value))


def _plain(value: object) -> object:
    """JSON-ready form of a setting's value, secrets revealed (the child needs them)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return {name: _plain(item) for name, item in value if item is not None}
    if isinstance(value, Mapping):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
