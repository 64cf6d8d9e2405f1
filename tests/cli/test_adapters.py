"""`sdqueue adapters`: tiny random adapters in each layout, and the refusal to upload a non-safetensors file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from safetensors import safe_open

from sdqueue.cli import build_parser, main
from sdqueue.cli._adapter_options import AdapterOption, parse_adapter_options
from sdqueue.client import UsageError


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


def test_lora_and_embedding_options_read_their_reference_hash_scale_and_token():
    sha = "ab" * 32
    args = build_parser().parse_args(
        ["generate", "x", "--lora", "style", "--lora", f"adapters/{sha}.safetensors:0.5", "--lora", "./my.safetensors",
         "--lora", f"style@{sha}:-1", "--embedding", "fox:<fox>"]
    )  # fmt: skip

    options = parse_adapter_options(args)

    assert options == [
        AdapterOption(ref="style", kind="lora", sha256=None, scale=None, token=None),
        AdapterOption(ref=f"adapters/{sha}.safetensors", kind="lora", sha256=None, scale=0.5, token=None),
        AdapterOption(ref="./my.safetensors", kind="lora", sha256=None, scale=None, token=None),
        AdapterOption(ref="style", kind="lora", sha256=sha, scale=-1.0, token=None),
        AdapterOption(ref="fox", kind="embedding", sha256=None, scale=None, token="<fox>"),
    ]


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--lora", "style:strong"], "the scale 'strong' is not a number"),
        (["--embedding", "fox"], "needs the token it binds"),
        (["--lora", "a:1:2"], "expected REF[@SHA256][:SCALE]"),
    ],
)
def test_a_malformed_adapter_option_is_a_usage_error(option: list[str], says: str):
    args = build_parser().parse_args(["generate", "x", *option])

    with pytest.raises(UsageError, match=re.escape(says)):
        parse_adapter_options(args)
