"""The worker's loaded models: every served alias, with pipelines kept within a memory budget (least recently used out).

All loading, generating and unloading happens on the one generation thread, so the cache needs no lock; other
threads read only `loaded`, `scheduler_names` and `families`, which are replaced whole, never mutated.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from sdqueue.worker.generate import Family, GeneratedImages, GenerationSpec, ImageGenerator, PreviewCallback

log = logging.getLogger(__name__)

Loader = Callable[[str, str], ImageGenerator]  # (alias, source) -> a loaded, warmed-up generator


class ModelCache:
    """Loads aliases on demand and unloads the least recently used ones while the total is over the budget."""

    def __init__(
        self,
        sources: Mapping[str, str],
        *,
        load: Loader,
        budget_bytes: int | None,
        on_change: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self._sources = dict(sources)
        self._load = load
        self._budget_bytes = budget_bytes
        self._on_change = on_change
        self._loaded: collections.OrderedDict[str, ImageGenerator] = collections.OrderedDict()
        self._sizes: dict[str, int] = {}
        self.scheduler_names: dict[str, tuple[str, ...]] = {}
        self.families: dict[str, Family] = {}  # kept after an unload: a family never changes with the source
        self.loaded: tuple[str, ...] = ()  # aliases in memory, least recently used first

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every alias this worker serves, loaded or not."""
        return tuple(self._sources)

    def get(self, alias: str) -> ImageGenerator:
        """The alias's generator, loading it first (and unloading others) if needed; blocks, generation thread only."""
        generator = self._loaded.get(alias)
        if generator is None:
            self._make_room(self._sizes.get(alias, 0), keep=alias)
            generator = self._load_alias(alias)
        self._loaded.move_to_end(alias)
        self.loaded = tuple(self._loaded)
        return generator

    def load_all(self) -> None:
        """Load each alias once at start (fail fast on a bad source, learn its schedulers), within the budget."""
        for alias in self._sources:
            self.get(alias)

    def _load_alias(self, alias: str) -> ImageGenerator:
        started = time.monotonic()
        generator = self._load(alias, self._sources[alias])
        self._loaded[alias] = generator
        self._sizes[alias] = generator.memory_bytes
        self.scheduler_names = {**self.scheduler_names, alias: generator.scheduler_names}
        self.families = {**self.families, alias: generator.family}
        log.info(
            "model %s (%s) loaded in %.2fs (%.0f MiB)",
            alias,
            generator.family.name,
            time.monotonic() - started,
            self._sizes[alias] / 2**20,
        )
        self._make_room(0, keep=alias)
        self._changed()
        return generator

    def _make_room(self, incoming_bytes: int, *, keep: str) -> None:
        """Unload least recently used models until the loaded ones plus `incoming_bytes` fit the budget."""
        if self._budget_bytes is None:
            return
        while self._total_bytes() + incoming_bytes > self._budget_bytes:
            victim = next((alias for alias in self._loaded if alias != keep), None)
            if victim is None:
                return  # one model alone over the budget still runs: the budget bounds how many stay loaded
            self._loaded.pop(victim).release()
            log.info("model %s unloaded to stay within the %.0f MiB budget", victim, self._budget_bytes / 2**20)
            self._changed()

    def _total_bytes(self) -> int:
        return sum(self._sizes[alias] for alias in self._loaded)

    def _changed(self) -> None:
        self.loaded = tuple(self._loaded)
        if self._on_change is not None:
            self._on_change(self.loaded)


class CachedModel:
    """One alias of a `ModelCache` as an ImageGenerator: each call fetches (and if needed loads) the model."""

    def __init__(self, cache: ModelCache, alias: str) -> None:
        self._cache = cache
        self._alias = alias

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return self._cache.scheduler_names.get(self._alias, ())

    @property
    def memory_bytes(self) -> int:
        return self._cache.get(self._alias).memory_bytes

    @property
    def family(self) -> Family:
        """Known from the alias's first load (`ModelCache.load_all` loads every alias at start)."""
        return self._cache.families[self._alias]

    def release(self) -> None:
        """Unloading is the cache's decision; a single alias never releases itself."""

    def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> GeneratedImages:
        model = self._cache.get(self._alias)
        return model.generate(spec, on_step=on_step, should_stop=should_stop, on_preview=on_preview)

    def generate_batch(
        self,
        specs: Sequence[GenerationSpec],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[GeneratedImages]:
        model = self._cache.get(self._alias)
        return model.generate_batch(specs, on_step=on_step, should_stop=should_stop, on_preview=on_preview)
