"""Adapters on the real tiny pipelines (CPU): a LoRA changes the image, scale 0 and no adapter are bit-equal, a
batch of one adapter set equals lone runs (text-encoder LoRAs too), embeddings bind their token, misfits are refused,
the budget evicts."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from sdqueue.config import RuntimeSettings
from sdqueue.contracts.errors import InvalidRequest
from sdqueue.worker.generate import AdapterFile, GenerationSpec, ImageGenerator, load_generator
from sdqueue.worker.generate._invariant import _linear_forward
from sdqueue.worker.generate.tiny_adapters import build_tiny_embedding, build_tiny_lora
from tests.generation.specs import spec
from tests.plugins.tiny_model import TEST_RUNTIME

pytestmark = pytest.mark.slow  # runs the tiny model on CPU


def _file(path: Path, *, kind: str = "lora", scale: float = 1.0, token: str | None = None) -> AdapterFile:
    data = path.read_bytes()
    return AdapterFile(sha256=hashlib.sha256(data).hexdigest(), kind=kind, scale=scale, token=token, data=data)  # type: ignore[arg-type]


def _spec(prompt: str = "a fox", seed: int = 1, adapters: tuple[AdapterFile, ...] = ()) -> GenerationSpec:
    return spec(prompt=prompt, seeds=(seed,), adapters=adapters)


def _pixels(generator: ImageGenerator, spec: GenerationSpec) -> np.ndarray:
    return np.asarray(generator.generate(spec).images[0])


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_dir: Path) -> ImageGenerator:
    """A tiny model of this module's own: loading adapters adds LoRA layers the shared one must not get."""
    return load_generator(str(tiny_model_dir), runtime=TEST_RUNTIME)


@pytest.fixture(scope="module")
def tiny_sdxl_generator(tiny_sdxl_dir: Path) -> ImageGenerator:
    """The tiny SDXL model, likewise of this module's own."""
    return load_generator(str(tiny_sdxl_dir), runtime=TEST_RUNTIME)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tiny_sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "lora": build_tiny_lora(tiny_model_dir, folder / "lora.safetensors"),
        "other": build_tiny_lora(tiny_model_dir, folder / "other.safetensors", seed=1),
        "kohya": build_tiny_lora(tiny_model_dir, folder / "kohya.safetensors", seed=2, fmt="kohya"),
        "embedding": build_tiny_embedding(tiny_model_dir, folder / "embedding.safetensors"),
        "sdxl_lora": build_tiny_lora(tiny_sdxl_dir, folder / "sdxl-lora.safetensors"),
        "sdxl_embedding": build_tiny_embedding(tiny_sdxl_dir, folder / "sdxl-embedding.safetensors"),
        "te_peft": build_tiny_lora(tiny_model_dir, folder / "te-peft.safetensors", seed=3, text_encoder=True),
        "te_kohya": build_tiny_lora(
            tiny_model_dir, folder / "te-kohya.safetensors", seed=4, fmt="kohya", text_encoder=True
        ),
        "te_only": build_tiny_lora(
            tiny_model_dir, folder / "te-only.safetensors", seed=5, unet=False, text_encoder=True
        ),
        "sdxl_te_peft": build_tiny_lora(tiny_sdxl_dir, folder / "sdxl-te-peft.safetensors", seed=6, text_encoder=True),
        "sdxl_te_kohya": build_tiny_lora(
            tiny_sdxl_dir, folder / "sdxl-te-kohya.safetensors", seed=7, fmt="kohya", text_encoder=True
        ),
        "sdxl_te_only": build_tiny_lora(
            tiny_sdxl_dir, folder / "sdxl-te-only.safetensors", seed=8, unet=False, text_encoder=True
        ),
    }


def test_a_lora_changes_the_image_and_scale_zero_restores_it_bit_for_bit(tiny_generator, adapters):
    lora = _file(adapters["lora"])
    plain = _pixels(tiny_generator, _spec())

    styled = _pixels(tiny_generator, _spec(adapters=(lora,)))
    at_zero = _pixels(tiny_generator, _spec(adapters=(dataclasses.replace(lora, scale=0.0),)))

    assert not np.array_equal(plain, styled)
    assert np.array_equal(plain, at_zero)
    assert np.array_equal(plain, _pixels(tiny_generator, _spec()))


def test_a_kohya_lora_loads_and_changes_the_image(tiny_generator, adapters):
    plain = _pixels(tiny_generator, _spec())

    assert not np.array_equal(plain, _pixels(tiny_generator, _spec(adapters=(_file(adapters["kohya"]),))))


def test_one_adapter_set_batched_equals_lone_runs(tiny_generator, adapters):
    pair = (_file(adapters["lora"], scale=0.7), _file(adapters["other"], scale=-0.5))
    specs = [_spec("a fox", 1, pair), _spec("a cat", 2, pair), _spec("a dog", 3, pair)]

    lone = [_pixels(tiny_generator, spec) for spec in specs]
    batched = tiny_generator.generate_batch(specs)

    for alone, together in zip(lone, batched, strict=True):
        assert np.array_equal(alone, np.asarray(together.images[0]))


def test_the_lora_layers_are_pinned_batch_invariant(tiny_generator, adapters):
    tiny_generator.generate(_spec(adapters=(_file(adapters["lora"]),)))
    unet = tiny_generator._pipelines["txt2img"].unet

    lora_linears = [m for name, m in unet.named_modules() if ".lora_" in name and isinstance(m, nn.Linear)]
    assert lora_linears
    assert all(getattr(m.forward, "__func__", None) is _linear_forward for m in lora_linears)


TEXT_ENCODER_LORAS = [
    ("tiny_generator", "te_peft"),
    ("tiny_generator", "te_kohya"),
    ("tiny_generator", "te_only"),
    ("tiny_sdxl_generator", "sdxl_te_peft"),
    ("tiny_sdxl_generator", "sdxl_te_kohya"),
    ("tiny_sdxl_generator", "sdxl_te_only"),
]


@pytest.mark.parametrize(("generator_fixture", "name"), TEXT_ENCODER_LORAS)
def test_a_text_encoder_lora_changes_the_image_scale_zero_restores_it_and_batches_equal_lone_runs(
    request, adapters, generator_fixture, name
):
    generator = request.getfixturevalue(generator_fixture)
    lora = _file(adapters[name], scale=0.8)
    plain = _pixels(generator, _spec())
    specs = [_spec("a fox", 1, (lora,)), _spec("a cat", 2, (lora,))]

    lone = [_pixels(generator, spec) for spec in specs]
    batched = generator.generate_batch(specs)
    at_zero = _pixels(generator, _spec(adapters=(dataclasses.replace(lora, scale=0.0),)))

    assert not np.array_equal(plain, lone[0])
    assert all(
        np.array_equal(alone, np.asarray(together.images[0])) for alone, together in zip(lone, batched, strict=True)
    )
    assert np.array_equal(plain, at_zero)


def test_a_text_encoder_lora_reaches_every_text_encoder_and_is_pinned(tiny_sdxl_generator, adapters):
    lora = _file(adapters["sdxl_te_kohya"])
    tiny_sdxl_generator.generate(_spec(adapters=(lora,)))
    pipeline = tiny_sdxl_generator._pipelines["txt2img"]

    loaded = pipeline.get_list_adapters()
    assert all(f"sha256_{lora.sha256[:32]}" in loaded[part] for part in ("unet", "text_encoder", "text_encoder_2"))
    for encoder in (pipeline.text_encoder, pipeline.text_encoder_2):
        lora_linears = [m for name, m in encoder.named_modules() if ".lora_" in name and isinstance(m, nn.Linear)]
        assert lora_linears
        assert all(getattr(m.forward, "__func__", None) is _linear_forward for m in lora_linears)


def test_a_unet_only_lora_after_a_text_encoder_lora_leaves_the_text_encoder_plain(tiny_model_dir, adapters):
    # A generator of its own, so the UNet-only image is taken before any text-encoder LoRA was loaded.
    generator = load_generator(str(tiny_model_dir), runtime=TEST_RUNTIME)
    unet_only = _file(adapters["lora"])
    before = _pixels(generator, _spec(adapters=(unet_only,)))

    _pixels(generator, _spec(adapters=(_file(adapters["te_only"]),)))

    assert np.array_equal(before, _pixels(generator, _spec(adapters=(unet_only,))))


def test_an_embedding_binds_its_token_only_while_its_job_runs(tiny_generator, adapters):
    embedding = _file(adapters["embedding"], kind="embedding", token="<fox>")
    plain = _pixels(tiny_generator, _spec("a <fox>"))

    bound = _pixels(tiny_generator, _spec("a <fox>", adapters=(embedding,)))

    assert not np.array_equal(plain, bound)
    assert np.array_equal(plain, _pixels(tiny_generator, _spec("a <fox>")))


def test_an_adapter_of_another_family_or_shape_is_an_invalid_request(tiny_generator, adapters):
    plain = _pixels(tiny_generator, _spec())
    for name, kind, token in (("sdxl_lora", "lora", None), ("sdxl_embedding", "embedding", "<fox>")):
        with pytest.raises(InvalidRequest, match=r"does not fit|SD1-family"):
            tiny_generator.generate(_spec(adapters=(_file(adapters[name], kind=kind, token=token),)))

    assert np.array_equal(plain, _pixels(tiny_generator, _spec()))


def test_a_pickle_is_never_loaded(tiny_generator, tmp_path: Path):
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)

    with pytest.raises(InvalidRequest, match="not a valid safetensors"):
        tiny_generator.generate(_spec(adapters=(_file(pickled),)))


def test_sdxl_takes_its_own_lora_and_embedding(tiny_sdxl_generator, adapters):
    plain = _pixels(tiny_sdxl_generator, _spec("a <fox>"))
    lora = _file(adapters["sdxl_lora"])
    embedding = _file(adapters["sdxl_embedding"], kind="embedding", token="<fox>")

    assert not np.array_equal(plain, _pixels(tiny_sdxl_generator, _spec("a <fox>", adapters=(lora,))))
    assert not np.array_equal(plain, _pixels(tiny_sdxl_generator, _spec("a <fox>", adapters=(embedding,))))
    assert np.array_equal(plain, _pixels(tiny_sdxl_generator, _spec("a <fox>")))


def test_the_adapter_budget_evicts_the_least_recently_used_and_reloads_it(tiny_model_dir, tmp_path: Path):
    # Rank 40 makes each file about 0.7 MB: a 1 MB budget holds one of them, not two.
    first = _file(build_tiny_lora(tiny_model_dir, tmp_path / "first.safetensors", rank=40))
    second = _file(build_tiny_lora(tiny_model_dir, tmp_path / "second.safetensors", seed=1, rank=40))
    runtime = RuntimeSettings(device="cpu", threads=2, warmup_steps=0, adapter_memory_mb=1)
    generator = load_generator(str(tiny_model_dir), runtime=runtime)
    pipeline = generator._pipelines["txt2img"]  # type: ignore[attr-defined]

    def loaded() -> set[str]:
        return {name for names in pipeline.get_list_adapters().values() for name in names}

    once = _pixels(generator, _spec(adapters=(first,)))
    assert loaded() == {f"sha256_{first.sha256[:32]}"}
    _pixels(generator, _spec(adapters=(second,)))
    assert loaded() == {f"sha256_{second.sha256[:32]}"}
    again = _pixels(generator, _spec(adapters=(first,)))

    assert np.array_equal(once, again)
    assert loaded() == {f"sha256_{first.sha256[:32]}"}


def test_a_text_encoder_lora_counts_in_the_budget_and_leaves_the_text_encoder_on_eviction(tiny_model_dir, tmp_path):
    # Text-encoder-only, rank 300: about 0.6 MB each on the tiny model; a 1 MB budget holds one of them, not two.
    first = _file(build_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors", rank=300, unet=False, text_encoder=True))
    second = _file(
        build_tiny_lora(tiny_model_dir, tmp_path / "b.safetensors", seed=1, rank=300, unet=False, text_encoder=True)
    )
    runtime = RuntimeSettings(device="cpu", threads=2, warmup_steps=0, adapter_memory_mb=1)
    generator = load_generator(str(tiny_model_dir), runtime=runtime)
    pipeline = generator._pipelines["txt2img"]  # type: ignore[attr-defined]

    _pixels(generator, _spec(adapters=(first,)))
    _pixels(generator, _spec(adapters=(second,)))

    assert pipeline.get_list_adapters() == {"text_encoder": [f"sha256_{second.sha256[:32]}"]}
