"""The tiny model: deterministic, readable, loadable through from_pretrained, with a tokenizer that works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from sdqueue.worker.generate import SCHEDULERS, build_tiny_model, describe_runtime, ensure_tiny_model
from tests.plugins.tiny_model import TEST_RUNTIME

pytestmark = pytest.mark.slow  # runs the tiny model on CPU: seconds, and many more on a loaded machine


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_builds_identical_files_and_another_seed_other_weights(tmp_path):
    first = _files(build_tiny_model(tmp_path / "a", seed=0))
    second = _files(build_tiny_model(tmp_path / "b", seed=0))
    other = _files(build_tiny_model(tmp_path / "c", seed=1))

    assert first == second
    assert "unet/diffusion_pytorch_model.safetensors" in first
    assert other["unet/diffusion_pytorch_model.safetensors"] != first["unet/diffusion_pytorch_model.safetensors"]
    assert other["tokenizer/vocab.json"] == first["tokenizer/vocab.json"]


def test_building_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_model_files_are_readable_by_everyone(tiny_model_dir):
    modes = {path.name: path.stat().st_mode & 0o777 for path in tiny_model_dir.rglob("*") if path.is_file()}
    assert modes
    assert set(modes.values()) == {0o644}


def test_tokenizer_has_the_clip_length_and_real_token_ids(tiny_model_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")

    ids = tokenizer("the cat").input_ids
    assert tokenizer.model_max_length == 77
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    assert ids[1:-1] == tokenizer.convert_tokens_to_ids(["the</w>", "cat</w>"])
    assert tokenizer("dog").input_ids != tokenizer("fox").input_ids


def test_loaded_model_offers_every_known_scheduler(tiny_generator):
    assert tiny_generator.scheduler_names == SCHEDULERS
    assert {"euler", "euler_a", "dpmpp_2m", "ddim", "pndm"} <= set(SCHEDULERS)


def test_runtime_description_names_what_runs():
    line = describe_runtime(TEST_RUNTIME)
    assert "device=cpu" in line
    assert "dtype=float32" in line
    assert "threads=2" in line
    assert f"torch={torch.__version__}" in line


def test_ensure_builds_once_and_leaves_no_staging_behind(tmp_path):
    target = tmp_path / "models" / "tiny"

    assert ensure_tiny_model(target) == target
    built_at = (target / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_model(target) == target

    assert (target / "model_index.json").stat().st_mtime_ns == built_at
    assert [path.name for path in target.parent.iterdir()] == ["tiny"]


def test_concurrent_processes_end_with_one_complete_model(tmp_path, tiny_model_dir):
    target = tmp_path / "tiny"
    code = (
        "import sys, pathlib; from sdqueue.worker.generate import ensure_tiny_model as e; e(pathlib.Path(sys.argv[1]))"
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    builders = [subprocess.Popen([sys.executable, "-c", code, str(target)], env=env) for _ in range(2)]

    assert [builder.wait(timeout=60) for builder in builders] == [0, 0]
    assert [path.name for path in tmp_path.iterdir()] == ["tiny"]
    assert _files(target) == _files(tiny_model_dir)
