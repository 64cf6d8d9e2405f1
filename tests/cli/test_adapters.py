"""`sdqueue adapters`: tiny random adapters in each layout, and the refusal to upload a non-safetensors file."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from sdqueue.cli import main


@pytest.mark.slow  # loads the tiny model's UNet
@pytest.mark.parametrize(
    ("arguments", "marker"),
    [
        (["--kind", "lora"], ".lora_A.weight"),
        (["--kind", "lora", "--format", "kohya"], ".lora_down.weight"),
        (["--kind", "embedding"], "emb_params"),
    ],
)
def test_tiny_builds_each_kind_and_layout(tiny_model_dir: Path, tmp_path: Path, capsys, arguments, marker):
    out = tmp_path / "adapter.safetensors"

    assert main(["adapters", "tiny", "--model", str(tiny_model_dir), *arguments, str(out)]) == 0

    assert capsys.readouterr().out.strip() == str(out)
    with safe_open(str(out), framework="numpy") as file:
        assert any(marker in key for key in file.keys())  # noqa: SIM118  # safe_open is not a mapping


def test_put_refuses_a_file_that_is_not_safetensors(tmp_path: Path, capsys):
    pickled = tmp_path / "style.ckpt"
    pickled.write_bytes(b"\x80\x04")

    assert main(["adapters", "put", str(pickled)]) == 1

    assert "only .safetensors" in capsys.readouterr().err
