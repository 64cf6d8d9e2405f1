"""`--lora` and `--embedding` on the generation commands: a worker's named adapter, a bucket key or a local file,
each turned into a request's adapter entry pinned to one file's sha256.

    --lora NAME[@SHA256][:SCALE]         a named adapter; its sha256 is heard from the workers' heartbeats
    --lora adapters/KEY.safetensors[...] a bucket object; a key `adapters put` made names its own sha256
    --lora ./FILE.safetensors[:SCALE]    a local file, uploaded first (content-addressed)
    --embedding REF[@SHA256]:<token>     the same references, for a textual-inversion embedding
"""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from sdqueue.client import SdqueueClient, UsageError
from sdqueue.contracts import AdapterKind, WorkerHeartbeat
from sdqueue.contracts.adapters import ADAPTER_KEY_PREFIX, sha256_of_key

# REF, an optional @sha256, then an optional :SUFFIX (a LoRA's scale, an embedding's token).
_OPTION = re.compile(r"^(?P<ref>[^@:]+)(?:@(?P<sha256>[0-9a-f]{64}))?(?::(?P<suffix>[^:]+))?$")
# Heartbeats come every `heartbeat_interval_s` (10 s by default): a little more, to hear every worker once.
NAME_LISTEN_S = 12.0


@dataclass(frozen=True)
class AdapterOption:
    """One `--lora` or `--embedding` as given: what it refers to, and its scale or token."""

    ref: str
    kind: AdapterKind
    sha256: str | None
    scale: float | None
    token: str | None


def add_adapter_options(options: argparse.ArgumentParser) -> None:
    """Add `--lora` and `--embedding` (each repeatable) to a generation command."""
    options.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="REF[@SHA256][:SCALE]",
        help="a LoRA: a worker's adapter name, a bucket key under adapters/, or a local .safetensors file",
    )
    options.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="REF[@SHA256]:<token>",
        help="a textual-inversion embedding and the prompt word it binds, e.g. style@...:<my-style>",
    )


def parse_adapter_options(args: argparse.Namespace) -> list[AdapterOption]:
    """The `--lora` and `--embedding` options in the order given, LoRAs first.

    Raises:
        UsageError: an option does not read as REF[@SHA256][:SCALE] or REF[@SHA256]:TOKEN.
    """
    loras = [_parse(text, kind="lora") for text in args.lora]
    return loras + [_parse(text, kind="embedding") for text in args.embedding]


def _parse(text: str, *, kind: AdapterKind) -> AdapterOption:
    option = _OPTION.match(text)
    if option is None:
        raise UsageError(f"--{kind} {text!r}: expected REF[@SHA256]{'[:SCALE]' if kind == 'lora' else ':<token>'}")
    suffix = option["suffix"]
    if kind == "embedding":
        if suffix is None:
            raise UsageError(f"--embedding {text!r} needs the token it binds, e.g. {option['ref']}:<my-style>")
        return AdapterOption(ref=option["ref"], kind=kind, sha256=option["sha256"], scale=None, token=suffix)
    try:
        scale = None if suffix is None else float(suffix)
    except ValueError as exc:
        raise UsageError(f"--lora {text!r}: the scale {suffix!r} is not a number") from exc
    return AdapterOption(ref=option["ref"], kind=kind, sha256=option["sha256"], scale=scale, token=None)


async def adapter_entries(
    client: SdqueueClient, options: list[AdapterOption], *, model: str
) -> list[dict[str, object]]:
    """The request's `adapters`: each option's reference as a key or name, with the sha256 of its file.

    Raises:
        UsageError: a file that cannot be read, a key without a sha256, a name no worker of `model` holds.
        StorageError: a local file could not be uploaded.
    """
    entries = []
    fleet: list[WorkerHeartbeat] | None = None
    for option in options:
        reference, sha256 = await _pinned_reference(client, option)
        if sha256 is None:
            fleet = fleet if fleet is not None else await _fleet_holding(client, options, model=model)
            sha256 = _announced_sha256(fleet, name=option.ref, model=model)
        entries.append(_entry(option, reference=reference, sha256=sha256))
    return entries


def _is_name(ref: str) -> bool:
    """Whether a reference is a worker's adapter name: neither a bucket key nor a local file."""
    return not ref.startswith(ADAPTER_KEY_PREFIX) and not ref.endswith(".safetensors")


async def _pinned_reference(client: SdqueueClient, option: AdapterOption) -> tuple[dict[str, str], str | None]:
    """The option's `key` or `name`, and its sha256 when the option itself pins it (None: ask the workers)."""
    if option.ref.startswith(ADAPTER_KEY_PREFIX):
        sha256 = option.sha256 or sha256_of_key(option.ref)
        if sha256 is None:
            raise UsageError(f"adapter {option.ref} needs its sha256: {option.ref}@SHA256")
        return {"key": option.ref}, sha256
    if not _is_name(option.ref):
        stored = await client.upload_adapter(await _read(Path(option.ref)))
        return {"key": stored.key}, stored.sha256
    return {"name": option.ref}, option.sha256


async def _read(path: Path) -> bytes:
    try:
        return await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


async def _fleet_holding(client: SdqueueClient, options: list[AdapterOption], *, model: str) -> list[WorkerHeartbeat]:
    """The workers heard until one of `model` announces every named option (or `NAME_LISTEN_S` pass)."""
    names = {option.ref for option in options if _is_name(option.ref)}

    def holds_all(fleet: list[WorkerHeartbeat]) -> bool:
        return any(model in beat.models and names <= {adapter.name for adapter in beat.adapters} for beat in fleet)

    return await client.fleet(listen_s=NAME_LISTEN_S, until=holds_all)


def _announced_sha256(fleet: list[WorkerHeartbeat], *, name: str, model: str) -> str:
    hashes = {a.sha256 for beat in fleet if model in beat.models for a in beat.adapters if a.name == name}
    if not hashes:
        raise UsageError(f"no worker of model {model!r} announced an adapter named {name!r} (`sdqueue adapters list`)")
    if len(hashes) > 1:
        raise UsageError(f"workers hold different files as adapter {name!r}: give one, {name}@SHA256")
    return hashes.pop()


def _entry(option: AdapterOption, *, reference: dict[str, str], sha256: str) -> dict[str, object]:
    entry: dict[str, object] = {**reference, "sha256": sha256, "kind": option.kind}
    if option.scale is not None:
        entry["scale"] = option.scale
    if option.token is not None:
        entry["token"] = option.token
    return entry
