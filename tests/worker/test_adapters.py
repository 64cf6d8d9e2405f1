"""A job's adapters on the job path, with in-memory collaborators: fetched, checked (size, hash, format), handed to
the generator, and reported; each bad form is an `invalid_request` before anything is generated."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

from sdqueue.contracts import AdapterRef, ErrorCode, NamedAdapter, SucceededEvent
from sdqueue.contracts.errors import UsageError
from sdqueue.contracts.topology import output_key
from sdqueue.worker.adapters import adapter_kind, check_adapter_map, is_safetensors, safetensors_header
from tests.worker.test_job_path import Harness

ADAPTER = save({"lora.down": np.ones((2, 4), np.float32)})
KEY = "adapters/style.safetensors"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lora(data: bytes = ADAPTER, **fields: object) -> dict[str, object]:
    return {"key": KEY, "sha256": sha(data), **fields}


async def test_an_adapter_by_key_reaches_the_generator_and_the_event_record_and_png_name_it():
    harness = Harness()
    harness.objects.objects[KEY] = ADAPTER
    delivery, verification = harness.delivery(adapters=[lora(scale=0.5)])

    assert await harness.path.settle_as(delivery, verification) == "ack"

    [spec] = harness.generator.calls
    [adapter] = spec.adapters
    assert (adapter.sha256, adapter.kind, adapter.scale, adapter.data) == (sha(ADAPTER), "lora", 0.5, ADAPTER)
    succeeded = harness.events.published[-1]
    assert isinstance(succeeded, SucceededEvent)
    assert [(a.key, a.sha256, a.scale) for a in succeeded.adapters] == [(KEY, sha(ADAPTER), 0.5)]
    assert harness.records.records[str(delivery.job_id)].event == succeeded
    png = harness.objects.objects[output_key(str(delivery.job_id), 0, "png")]
    parameters = _png_parameters(png)
    assert f'Lora hashes: "style: {sha(ADAPTER)[:12]}"' in parameters
    assert 'Lora scales: "style: 0.5"' in parameters


async def test_a_named_adapter_is_read_from_the_workers_map(tmp_path: Path):
    path = tmp_path / "fox.safetensors"
    path.write_bytes(ADAPTER)
    harness = Harness(adapters={"fox": path})
    embedding = {"name": "fox", "sha256": sha(ADAPTER), "kind": "embedding", "token": "<fox>"}
    delivery, verification = harness.delivery(adapters=[embedding])

    assert await harness.path.settle_as(delivery, verification) == "ack"

    [adapter] = harness.generator.calls[0].adapters
    assert (adapter.kind, adapter.token, adapter.data) == ("embedding", "<fox>", ADAPTER)
    png = harness.objects.objects[output_key(str(delivery.job_id), 0, "png")]
    assert f"TI hashes: <fox>: {sha(ADAPTER)[:12]}" in _png_parameters(png).replace('"', "")


async def test_each_bad_adapter_is_an_invalid_request_before_generation(tmp_path: Path):
    pickled = pickle.dumps({"lora.down": [1.0, 2.0]})
    harness = Harness(limits={"max_adapter_bytes": 1024}, adapters={"gone": tmp_path / "missing.safetensors"})
    harness.objects.objects |= {
        KEY: ADAPTER,
        "adapters/pickle.safetensors": pickled,
        "adapters/big.safetensors": ADAPTER + b" " * 1024,
    }
    cases = [
        ([lora(sha256="0" * 64)], "does not match its sha256"),
        ([lora(pickled, key="adapters/pickle.safetensors")], "is not a safetensors file"),
        ([lora(ADAPTER + b" " * 1024, key="adapters/big.safetensors")], "is larger than 1024 bytes"),
        ([lora(key="adapters/absent.safetensors")], "does not exist in the bucket"),
        ([{"name": "unknown", "sha256": sha(ADAPTER)}], "is not served"),
        ([{"name": "gone", "sha256": sha(ADAPTER)}], "cannot be read on this worker"),
    ]
    for adapters, _ in cases:
        delivery, verification = harness.delivery(adapters=adapters)
        assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.INVALID_REQUEST] * len(cases)
    for message, (_, expected) in zip(harness.failure_messages(), cases, strict=True):
        assert expected in message
    assert "missing" not in " ".join(harness.failure_messages())  # the operator's path is not shown
    assert harness.generator.calls == []
    assert "started" not in harness.events.types


async def test_more_adapters_than_the_worker_allows_is_limits_exceeded():
    harness = Harness(limits={"max_adapters": 1})
    adapters = [lora(key=f"adapters/{index}.safetensors") for index in range(2)]
    delivery, verification = harness.delivery(adapters=adapters)

    assert await harness.path.settle_as(delivery, verification) == "reject"

    assert harness.failure_codes() == [ErrorCode.LIMITS_EXCEEDED]


def test_only_a_safetensors_header_passes_the_format_check():
    assert is_safetensors(ADAPTER)
    assert not is_safetensors(pickle.dumps({"a": 1}))
    assert not is_safetensors(b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2]          ")
    assert not is_safetensors(b"\xff" * 8 + b"{}")
    assert not is_safetensors(b"{}")


def test_the_reported_source_of_an_adapter_is_its_key_or_name():
    assert AdapterRef(key=KEY, sha256=sha(ADAPTER)).source == KEY
    assert AdapterRef(name="fox", sha256=sha(ADAPTER)).source == "name:fox"


def _png_parameters(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return str(image.info["parameters"])


def test_an_adapter_files_kind_is_read_from_its_tensor_names():
    embedding_sdxl = save({"clip_l": np.ones((2, 4), np.float32), "clip_g": np.ones((2, 8), np.float32)})
    neither = save({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})

    kinds = [adapter_kind(safetensors_header(data) or {}) for data in (ADAPTER, embedding_sdxl, neither)]

    assert kinds == ["lora", "embedding", None]
    assert safetensors_header(pickle.dumps({"lora": 1})) is None


async def test_the_adapter_map_is_checked_once_at_start(tmp_path: Path):
    good = tmp_path / "style.safetensors"
    good.write_bytes(ADAPTER)
    embedding = tmp_path / "fox.safetensors"
    embedding.write_bytes(save({"emb_params": np.ones((2, 4), np.float32)}))

    announced = await check_adapter_map({"style": good, "fox": embedding}, max_bytes=10_000)

    assert announced == (
        NamedAdapter(name="style", sha256=sha(ADAPTER), kind="lora", bytes=len(ADAPTER)),
        NamedAdapter(name="fox", sha256=sha(embedding.read_bytes()), kind="embedding", bytes=embedding.stat().st_size),
    )


async def test_each_wrong_map_entry_stops_the_start_with_its_name(tmp_path: Path):
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2]}))
    neither = tmp_path / "neither.safetensors"
    neither.write_bytes(save({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}))
    big = tmp_path / "big.safetensors"
    big.write_bytes(ADAPTER)

    for path, max_bytes, says in (
        (tmp_path / "absent.safetensors", 10_000, "cannot read"),
        (pickled, 10_000, "not a safetensors LoRA or embedding"),
        (neither, 10_000, "not a safetensors LoRA or embedding"),
        (big, len(ADAPTER) - 1, "larger than limits.max_adapter_bytes"),
    ):
        with pytest.raises(UsageError, match=f"adapter 'broken': .*{says}"):
            await check_adapter_map({"broken": path}, max_bytes=max_bytes)
