"""Fetch a job's adapters (by key from the bucket, by name from the worker's map) and check each file: its size,
its sha256 against the signed one, and that it is safetensors. Nothing here unpickles or parses tensors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

from sdqueue.config import LimitSettings
from sdqueue.contracts import AdapterRef
from sdqueue.contracts.errors import InvalidRequest, StorageRefused
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
    if len(data) < HEADER_LENGTH_BYTES:
        return False
    (length,) = struct.unpack("<Q", data[:HEADER_LENGTH_BYTES])
    if length > min(MAX_HEADER_BYTES, len(data) - HEADER_LENGTH_BYTES):
        return False
    try:
        header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(header, dict)


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
