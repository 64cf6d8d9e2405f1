"""The model cache on real tiny pipelines: lazy loads, least-recently-used unloads within the memory budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sdqueue.worker.generate import ImageGenerator, load_generator
from sdqueue.worker.generate.families import SD1, SDXL
from sdqueue.worker.models import CachedModel, ModelCache
from tests.plugins.tiny_model import TEST_RUNTIME

pytestmark = pytest.mark.slow  # runs the tiny model on CPU: seconds, and many more on a loaded machine


def _cache(model_dir: Path, *, aliases: str, budget_bytes: int | None) -> tuple[ModelCache, list[str]]:
    loads: list[str] = []

    def load(alias: str, source: str) -> ImageGenerator:
        loads.append(alias)
        return load_generator(source, runtime=TEST_RUNTIME)

    return ModelCache({alias: str(model_dir) for alias in aliases}, load=load, budget_bytes=budget_bytes), loads


def test_without_a_budget_every_model_stays_loaded(tiny_model_dir: Path):
    cache, loads = _cache(tiny_model_dir, aliases="abc", budget_bytes=None)

    cache.load_all()
    cache.get("a")

    assert loads == ["a", "b", "c"]
    assert cache.loaded == ("b", "c", "a")


def test_the_least_recently_used_model_is_unloaded_first(tiny_model_dir: Path, tiny_generator: ImageGenerator):
    two_models = math.floor(2.5 * tiny_generator.memory_bytes)
    cache, loads = _cache(tiny_model_dir, aliases="abc", budget_bytes=two_models)

    cache.load_all()
    assert cache.loaded == ("b", "c")
    cache.get("b")
    cache.get("a")  # c is now the least recently used

    assert cache.loaded == ("b", "a")
    assert loads == ["a", "b", "c", "a"]
    assert set(cache.scheduler_names) == {"a", "b", "c"}


def test_a_cached_model_reaches_its_alias_through_the_cache(tiny_model_dir: Path, tiny_generator: ImageGenerator):
    cache, loads = _cache(tiny_model_dir, aliases="ab", budget_bytes=tiny_generator.memory_bytes)
    cache.load_all()
    model = CachedModel(cache, "a")

    assert model.scheduler_names == tiny_generator.scheduler_names
    assert cache.loaded == ("b",)
    assert model.memory_bytes == tiny_generator.memory_bytes
    assert cache.loaded == ("a",)
    assert loads == ["a", "b", "a"]


def test_each_alias_keeps_the_family_of_its_pipeline_after_an_unload(tiny_model_dir: Path, tiny_sdxl_dir: Path):
    sources = {"small": str(tiny_model_dir), "xl": str(tiny_sdxl_dir)}
    cache = ModelCache(
        sources, load=lambda _alias, source: load_generator(source, runtime=TEST_RUNTIME), budget_bytes=1
    )

    cache.load_all()

    assert cache.loaded == ("xl",)
    assert cache.families == {"small": SD1, "xl": SDXL}
    assert (CachedModel(cache, "small").family, CachedModel(cache, "xl").family) == (SD1, SDXL)
