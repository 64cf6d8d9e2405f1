"""Adapters on the real stack: one worker serving an SD 1 and an SDXL alias, adapters uploaded to SeaweedFS or named
in the worker's map, jobs through RabbitMQ. Scale 0 and batching are bit-exact; each bad adapter is refused."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from sdqueue.client import SdqueueClient
from sdqueue.contracts import ErrorCode, GenerationRequest, NamedAdapter, SucceededEvent, WorkerHeartbeat
from sdqueue.contracts.errors import JobFailed
from sdqueue.devstack.stack import worker_environment
from sdqueue.worker.generate.tiny_adapters import build_tiny_embedding, build_tiny_lora
from tests.e2e.requests import signed_message, txt2img
from tests.plugins.isolated import IsolatedStack, free_port, updated

TIMEOUT_S = 120.0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _pixels(client: SdqueueClient, request: GenerationRequest) -> np.ndarray:
    event = await client.generate(request, timeout_s=TIMEOUT_S)
    with Image.open(io.BytesIO(await client.fetch_image(event.images[0]))) as image:
        return np.asarray(image.convert("RGB"))


async def _refusal(client: SdqueueClient, request: GenerationRequest) -> str:
    with pytest.raises(JobFailed) as failure:
        await client.generate(request, timeout_s=TIMEOUT_S)
    assert failure.value.code is ErrorCode.INVALID_REQUEST
    return failure.value.event.error.message


@pytest.fixture
def files(isolated: IsolatedStack, tiny_sdxl_dir: Path, tmp_path: Path) -> dict[str, Path]:
    sd1 = Path(isolated.settings.model_sources()["default"])
    return {
        "lora": build_tiny_lora(sd1, tmp_path / "lora.safetensors"),
        "kohya": build_tiny_lora(sd1, tmp_path / "kohya.safetensors", seed=1, fmt="kohya"),
        "fox": build_tiny_embedding(sd1, tmp_path / "fox.safetensors"),
        "xl_lora": build_tiny_lora(tiny_sdxl_dir, tmp_path / "xl-lora.safetensors", seed=2),
        "xl_fox": build_tiny_embedding(tiny_sdxl_dir, tmp_path / "xl-fox.safetensors", seed=3),
    }


@pytest.fixture
def health_port() -> int:
    return free_port()


async def _batches_run(port: int) -> float:
    """How many pipeline calls the worker has made (its batch-size histogram's count)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    families = text_string_to_metric_families(response.text)
    return next(s.value for f in families for s in f.samples if s.name == "sdqueue_batch_images_count")


@pytest.fixture
async def served(isolated: IsolatedStack, isolated_client: SdqueueClient, files, tiny_sdxl_dir: Path, health_port: int):
    """A worker with aliases `default` (SD 1) and `xl` (SDXL), embeddings named in its map, batches of up to 4,
    and a 1 MB adapter budget per model."""
    sources = {"default": isolated.settings.model_sources()["default"], "xl": str(tiny_sdxl_dir)}
    settings = updated(
        isolated.settings,
        # 1 MB holds the small LoRAs together, and one rank-40 LoRA (about 0.7 MB) at a time.
        runtime={"warmup_size_px": 64, "adapter_memory_mb": 1},
        broker={"prefetch": 4},
        batching={"max_images": 4, "max_wait_s": 0.5},
    )
    named = {"fox": files["fox"], "xl-fox": files["xl_fox"]}
    settings = settings.model_copy(
        update={"model": None, "models": sources, "adapters": named, "health_port": health_port}
    )
    isolated.start_worker("adapters", settings)
    for alias in sources:
        await isolated_client.wait_for_workers(alias, timeout_s=TIMEOUT_S)
    return isolated_client


def _with(*adapters: dict[str, Any], **fields: Any) -> GenerationRequest:
    return txt2img(**{"seed": 5, "prompt": "a <fox> in the snow", "adapters": list(adapters), **fields})


async def test_a_lora_changes_the_image_scale_zero_restores_it_and_a_batch_equals_lone_runs(served, files, health_port):
    stored = await served.upload_adapter(files["lora"].read_bytes())
    assert (stored.key, stored.sha256) == (f"adapters/{_sha(files['lora'])}.safetensors", _sha(files["lora"]))
    lora = {"key": stored.key, "sha256": stored.sha256, "scale": 0.8}

    plain = await _pixels(served, _with())
    styled = await _pixels(served, _with(lora))
    at_zero = await _pixels(served, _with({**lora, "scale": 0.0}))
    requests = [_with(lora, seed=seed) for seed in (11, 12, 13)]
    lone = [await _pixels(served, request) for request in requests]
    calls_before = await _batches_run(health_port)
    together = await asyncio.gather(*(_pixels(served, _with(lora, seed=seed)) for seed in (11, 12, 13)))
    calls = await _batches_run(health_port) - calls_before

    assert not np.array_equal(plain, styled)
    assert np.array_equal(plain, at_zero)
    assert calls < 3, "the three jobs of one adapter set should share a pipeline call"
    for alone, batched in zip(lone, together, strict=True):
        assert np.array_equal(alone, batched)


async def test_the_event_names_the_adapters_and_an_embedding_token_changes_the_image(served, files):
    kohya = await served.upload_adapter(files["kohya"].read_bytes())
    fox = {"name": "fox", "sha256": _sha(files["fox"]), "kind": "embedding", "token": "<fox>"}
    request = _with({"key": kohya.key, "sha256": kohya.sha256}, fox)

    event = await served.generate(request, timeout_s=TIMEOUT_S)
    plain = await _pixels(served, _with({"key": kohya.key, "sha256": kohya.sha256}))

    assert isinstance(event, SucceededEvent)
    assert [(a.key, a.name, a.sha256) for a in event.adapters] == [
        (kohya.key, None, kohya.sha256),
        (None, "fox", fox["sha256"]),
    ]
    with Image.open(io.BytesIO(await served.fetch_image(event.images[0]))) as image:
        assert f"<fox>: {fox['sha256'][:12]}" in str(image.info["parameters"])
        assert not np.array_equal(np.asarray(image.convert("RGB")), plain)


async def test_each_bad_adapter_is_an_invalid_request(served, isolated: IsolatedStack, files):
    lora = await served.upload_adapter(files["lora"].read_bytes())
    pickled = pickle.dumps({"weights": list(range(8))})
    bucket = isolated.settings.s3.bucket
    isolated.s3_client.put_object(Bucket=bucket, Key="adapters/pickled.safetensors", Body=pickled)
    xl = await served.upload_adapter(files["xl_lora"].read_bytes())

    mismatch = await _refusal(served, _with({"key": lora.key, "sha256": "0" * 64}))
    unpickled = await _refusal(
        served, _with({"key": "adapters/pickled.safetensors", "sha256": hashlib.sha256(pickled).hexdigest()})
    )
    misfit = await _refusal(served, _with({"key": xl.key, "sha256": xl.sha256}))

    assert "does not match its sha256" in mismatch
    assert "not a safetensors file" in unpickled
    assert "does not fit this model" in misfit


async def test_a_key_outside_adapters_is_refused_by_the_contract(served, isolated: IsolatedStack, isolated_probe):
    request = txt2img()
    body = request.model_dump(mode="json") | {
        "adapters": [{"key": f"inputs/{request.job_id}/x.safetensors", "sha256": "0" * 64}]
    }
    log = await isolated_probe.watch(request.job_id)
    message = signed_message(json.dumps(body).encode(), job_id=request.job_id, auth=isolated.settings.auth)

    await served.publish_raw(message, routing_key="default")

    await log.wait_for("failed", timeout_s=TIMEOUT_S)
    [failed] = log.of_type("failed")
    assert failed.error.code is ErrorCode.INVALID_REQUEST
    assert "adapters.0.key" in failed.error.message


async def test_two_aliases_each_take_their_own_familys_adapters(served, files):
    xl = await served.upload_adapter(files["xl_lora"].read_bytes())
    xl_fox = {"name": "xl-fox", "sha256": _sha(files["xl_fox"]), "kind": "embedding", "token": "<fox>"}
    sd1_fox = {"name": "fox", "sha256": _sha(files["fox"]), "kind": "embedding", "token": "<fox>"}

    plain = await _pixels(served, _with(model="xl"))
    styled = await _pixels(served, _with({"key": xl.key, "sha256": xl.sha256}, xl_fox, model="xl"))
    wrong_family = await _refusal(served, _with(sd1_fox, model="xl"))

    assert not np.array_equal(plain, styled)
    assert "embedding" in wrong_family


async def test_the_adapter_budget_unloads_the_least_recently_used_and_reloads_it(
    served, isolated: IsolatedStack, tmp_path: Path
):
    sd1 = Path(isolated.settings.model_sources()["default"])
    big = [build_tiny_lora(sd1, tmp_path / f"big-{seed}.safetensors", seed=seed, rank=40) for seed in (7, 8)]
    first, second = [await served.upload_adapter(path.read_bytes()) for path in big]

    once = await _pixels(served, _with({"key": first.key, "sha256": first.sha256}))
    await _pixels(served, _with({"key": second.key, "sha256": second.sha256}))
    again = await _pixels(served, _with({"key": first.key, "sha256": first.sha256}))

    assert np.array_equal(once, again)
    logs = isolated.logs()
    assert logs.count(f"LoRA {first.sha256[:12]} loaded") == 2, logs
    assert f"LoRA {first.sha256[:12]} unloaded to stay within the adapter budget" in logs


async def test_heartbeats_announce_the_named_adapters_with_their_hashes(served, files):
    def holds_fox(fleet: list[WorkerHeartbeat]) -> bool:
        return any(adapter.name == "fox" for beat in fleet for adapter in beat.adapters)

    fleet = await served.fleet(listen_s=TIMEOUT_S, until=holds_fox)

    [beat] = [beat for beat in fleet if beat.worker == "adapters"]
    assert sorted(beat.adapters, key=lambda adapter: adapter.name) == [
        NamedAdapter(name="fox", sha256=_sha(files["fox"]), kind="embedding", bytes=files["fox"].stat().st_size),
        NamedAdapter(
            name="xl-fox", sha256=_sha(files["xl_fox"]), kind="embedding", bytes=files["xl_fox"].stat().st_size
        ),
    ]


async def test_the_cli_pins_a_named_embedding_and_uploads_a_local_lora(
    served, isolated: IsolatedStack, files, tmp_path: Path
):
    job_id = "cli-adapters-1"
    argv = ["generate", "a <fox> in the snow", "--width", "64", "--height", "64", "--steps", "2", "--seed", "5"]
    argv += ["--embedding", "fox:<fox>", "--lora", f"{files['lora']}:0.5", "--job-id", job_id, "-o", "out.png"]

    done = await asyncio.to_thread(_sdqueue, argv, isolated, cwd=tmp_path)
    listing = await asyncio.to_thread(_sdqueue, ["adapters", "list"], isolated, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    record = await served.read_record(job_id)
    assert isinstance(record, SucceededEvent)
    assert [(a.key, a.name, a.sha256, a.scale) for a in record.adapters] == [
        (f"adapters/{_sha(files['lora'])}.safetensors", None, _sha(files["lora"]), 0.5),
        (None, "fox", _sha(files["fox"]), 1.0),
    ]
    assert (tmp_path / "out.png").exists()
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:4] == ["fox", "embedding", str(files["fox"].stat().st_size), _sha(files["fox"])]
               for line in listing.stdout.splitlines()), listing.stdout  # fmt: skip
    unknown = await asyncio.to_thread(_sdqueue, [*argv[:-4], "--lora", "nobody:1", "--job-id", "cli-adapters-2"],
                                      isolated, cwd=tmp_path)  # fmt: skip
    assert unknown.returncode == 1
    assert "no worker of model 'default' announced an adapter named 'nobody'" in unknown.stderr


@pytest.mark.parametrize("problem", ["missing", "pickle", "oversized"])
async def test_a_worker_whose_adapter_map_is_wrong_does_not_start(
    isolated: IsolatedStack, files, tmp_path: Path, problem: str
):
    path = {
        "missing": tmp_path / "missing.safetensors",
        "pickle": tmp_path / "pickled.safetensors",
        "oversized": files["lora"],
    }[problem]
    if problem == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    settings = updated(isolated.settings, limits={"max_adapter_bytes": 1024})
    worker = isolated.start_worker("bad-map", settings.model_copy(update={"adapters": {"styled": path}}))

    code = await asyncio.to_thread(worker.process.wait, 120)

    assert code == 2, worker.log_tail()
    assert f"the worker cannot start: adapter 'styled': {'' if problem == 'missing' else path}" in worker.log_tail()


def _sdqueue(argv: list[str], isolated: IsolatedStack, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `sdqueue` command on the isolated stack."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "sdqueue"), *argv],
        capture_output=True,
        text=True,
        env=worker_environment(isolated.settings),
        cwd=cwd,
        timeout=TIMEOUT_S,
        check=False,
    )
