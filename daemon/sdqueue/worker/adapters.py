"""Fetch a job's adapters (by key from the bucket, by name from the worker's map) and check each file: its size,
its sha256 against the signed one, and that it is safetensors; and check the worker's adapter map once at start.
Nothing here unpickles or parses tensors: only the safetensors header (JSON) is read."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

from sdqueue.config import LimitSettings
from sdqueue.contracts import AdapterKind, AdapterRef, NamedAdapter
from sdqueue.contracts.errors import InvalidRequest, StorageRefused, UsageError
from sdqueue.worker.generate import AdapterFile
from sdqueue.worker.ports import ObjectStore

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own cap on its JSON header


async def fetch_adapters(
    refs: list[AdapterRef], *, objects: ObjectStore, named: Mapping[str, Path], limits: LimitSettings
) -> tuple[AdapterFile, ...]:
    """Every adapter of a request, read and checked, in request order.

    Raises:
        InvalidRequest: a missing object or unknown name, a file over `max_adapter_bytes`, a hash other than the
            signed one, or a file that is not safetensors.
        StorageError: the bucket is unreachable.
    """
    files = []
    for ref in refs:
        data = await _read(ref, objects=objects, named=named, max_bytes=limits.max_adapter_bytes)
        files.append(await asyncio.to_thread(checked_adapter, ref, data, max_bytes=limits.max_adapter_bytes))
    return tuple(files)


def checked_adapter(ref: AdapterRef, data: bytes, *, max_bytes: int) -> AdapterFile:
    """The adapter file once its size, hash and format are checked.

    Raises:
        InvalidRequest: over the size cap, another hash, or not safetensors.
    """
    label = ref.source
    if len(data) > max_bytes:
        raise InvalidRequest(f"adapter {label} is larger than {max_bytes} bytes")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise InvalidRequest(f"adapter {label} does not match its sha256")
    if not is_safetensors(data):
        raise InvalidRequest(f"adapter {label} is not a safetensors file")
    return AdapterFile(sha256=ref.sha256, kind=ref.kind, scale=ref.scale, token=ref.token, data=data)


def is_safetensors(data: bytes) -> bool:
    """Say whether `data` starts with a safetensors header: a little-endian length, then a JSON object."""
    return safetensors_header(data) is not None


def safetensors_header(data: bytes) -> dict[str, object] | None:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), or None if it has none."""
    if len(data) < HEADER_LENGTH_BYTES:
        return None
    (length,) = struct.unpack("<Q", data[:HEADER_LENGTH_BYTES])
    if length > min(MAX_HEADER_BYTES, len(data) - HEADER_LENGTH_BYTES):
        return None
    try:
        header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def adapter_kind(header: dict[str, object]) -> AdapterKind | None:
    """What a file's tensor names say it is: LoRA layers (PEFT, diffusers or kohya names all say `lora`), an
    embedding (one vectors tensor, or SDXL's `clip_l` and `clip_g`), or neither."""
    names = [name for name in header if name != "__metadata__"]
    if any("lora" in name for name in names):
        return "lora"
    if len(names) == 1 or set(names) == {"clip_l", "clip_g"}:
        return "embedding"
    return None


async def check_adapter_map(named: Mapping[str, Path], *, max_bytes: int) -> tuple[NamedAdapter, ...]:
    """Read each file of the worker's adapter map once at start, so that a wrong map stops the worker before it
    takes a job; the result (name, sha256, kind, size) is what heartbeats announce.

    A file changed later is still checked against the request's sha256 on every use.

    Raises:
        UsageError: a file is missing, unreadable, over `max_adapter_bytes`, not safetensors, or neither a LoRA nor
            an embedding.
    """
    return tuple([await asyncio.to_thread(_named_adapter, name, path, max_bytes) for name, path in named.items()])


def _named_adapter(name: str, path: Path, max_bytes: int) -> NamedAdapter:
    try:
        data = _read_file(path, label=f"name:{name}", max_bytes=max_bytes)
    except InvalidRequest as exc:
        raise UsageError(f"adapter {name!r}: cannot read {path}: {exc.__cause__}") from exc
    if len(data) > max_bytes:
        raise UsageError(f"adapter {name!r}: {path} is larger than limits.max_adapter_bytes ({max_bytes})")
    header = safetensors_header(data)
    kind = None if header is None else adapter_kind(header)
    if kind is None:
        raise UsageError(f"adapter {name!r}: {path} is not a safetensors LoRA or embedding")
    return NamedAdapter(name=name, sha256=hashlib.sha256(data).hexdigest(), kind=kind, bytes=len(data))


async def _read(ref: AdapterRef, *, objects: ObjectStore, named: Mapping[str, Path], max_bytes: int) -> bytes:
    if ref.key is not None:
        return await _read_object(ref.key, objects=objects, max_bytes=max_bytes)
    path = named.get(ref.name or "")
    if path is None:
        raise InvalidRequest(f"adapter name {ref.name!r} is not served")
    return await asyncio.to_thread(_read_file, path, label=ref.source, max_bytes=max_bytes)


async def _read_object(key: str, *, objects: ObjectStore, max_bytes: int) -> bytes:
    try:
        data = await objects.read(key, max_bytes=max_bytes)
    except StorageRefused as exc:
        raise InvalidRequest(f"adapter {key} cannot be read") from exc
    if data is None:
        raise InvalidRequest(f"adapter {key} does not exist in the bucket")
    return data


def _read_file(path: Path, *, label: str, max_bytes: int) -> bytes:
    """At most `max_bytes + 1` bytes of a named adapter's file (the operator's, but its size is still capped)."""
    try:
        with path.open("rb") as file:
            return file.read(max_bytes + 1)
    except OSError as exc:
        # The path is the operator's: logged with the cause, never shown to the requester.
        raise InvalidRequest(f"adapter {label} cannot be read on this worker") from exc
