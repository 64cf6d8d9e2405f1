"""Micro-batching: compatible jobs in the prefetch window share one pipeline call on the generation thread.

Each job still verifies, records, publishes and settles on its own; only the generate stage is shared. A batch
that fails is retried job by job, so one bad job never fails (or burns the delivery count of) its neighbours.
Batches start with the highest-ranked waiting job (fair intake's lanes), first come first served within a rank.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sdqueue.config import BatchSettings
from sdqueue.worker.generate import (
    BatchKey,
    Family,
    GeneratedImages,
    GenerationSpec,
    ImageGenerator,
    StepPreview,
    adapter_set,
    batch_key,
)

log = logging.getLogger(__name__)

PROMOTED_RANK = 1_000  # above every lane's rank: a job that waited too long goes next


@dataclass(eq=False, kw_only=True)
class _Item:
    spec: GenerationSpec
    on_step: Callable[[int, int], None]
    should_stop: Callable[[], bool]
    on_preview: Callable[[StepPreview], None] | None
    future: asyncio.Future[GeneratedImages]
    rank: int
    queued_at: float
    key: BatchKey

    @property
    def pixel_steps(self) -> int:
        spec, hires = self.spec, self.spec.hires
        refine = 0 if hires is None else hires.width * hires.height * hires.steps
        return (spec.width * spec.height * spec.steps + refine) * len(spec.seeds)


class Batcher:
    """Gathers compatible specs for one model and runs them as one call; `generate` is what a job awaits."""

    def __init__(
        self,
        generator: ImageGenerator,
        *,
        executor: ThreadPoolExecutor,
        batching: BatchSettings,
        on_batch: Callable[[int], None] | None = None,
        promote_after_s: float = float("inf"),
        mixed_loras: bool = False,
    ) -> None:
        self._generator = generator
        self._mixed_loras = mixed_loras  # as the generator's `runtime.mixed_lora_batches`: the keys must agree
        self._promote_after_s = promote_after_s
        self._on_batch = on_batch
        self._executor = executor
        self._batching = batching
        self._arrivals: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: collections.deque[_Item] = collections.deque()

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """The schedulers the model behind this batcher can run."""
        return tuple(self._generator.scheduler_names)

    @property
    def family(self) -> Family:
        """The family of the model behind this batcher (its defaults fill what a request leaves out)."""
        return self._generator.family

    async def generate(
        self,
        spec: GenerationSpec,
        *,
        on_step: Callable[[int, int], None],
        should_stop: Callable[[], bool],
        on_preview: Callable[[StepPreview], None] | None = None,
        rank: int = 0,
    ) -> GeneratedImages:
        """Queue one job's spec and return its images once its batch has run; higher `rank` runs sooner. Its
        previews (of its own images only) go to `on_preview`, on the generation thread.

        Raises:
            The generator's errors, for this job alone.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GeneratedImages] = loop.create_future()
        item = _Item(
            spec=spec,
            on_step=on_step,
            should_stop=should_stop,
            on_preview=on_preview,
            future=future,
            rank=rank,
            queued_at=loop.time(),
            key=batch_key(spec, mixed_loras=self._mixed_loras),
        )
        self._arrivals.put_nowait(item)
        return await future

    async def run(self) -> None:
        """Form and run batches until cancelled."""
        while True:
            batch = await self._gather()
            await self._run(batch)

    async def _gather(self) -> list[_Item]:
        if not self._held:
            self._held.append(await self._arrivals.get())
        while not self._arrivals.empty():
            self._held.append(self._arrivals.get_nowait())
        first, *others = self._by_rank()
        self._held.remove(first)
        batch = [first]
        batch.extend(self._take_held(first, batch, candidates=others))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._batching.max_wait_s
        while self._has_room(batch) and (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    item = await self._arrivals.get()
            except TimeoutError:
                break
            if item.key == first.key and self._fits(batch, item):
                batch.append(item)
            else:
                self._held.append(item)
        return [item for item in batch if not item.future.done()]

    def _by_rank(self) -> list[_Item]:
        """Held jobs, highest rank first (a job held past `promote_after_s` outranks all), oldest first within."""
        now = asyncio.get_running_loop().time()

        def effective(item: _Item) -> int:
            return item.rank if now - item.queued_at < self._promote_after_s else PROMOTED_RANK

        return sorted(self._held, key=lambda item: -effective(item))  # sorted is stable: arrival order within a rank

    def _take_held(self, first: _Item, batch: list[_Item], *, candidates: list[_Item]) -> list[_Item]:
        """Held jobs that join `first`'s batch. With mixed LoRAs, jobs of `first`'s own adapter set go first and
        others fill the room left: a batch of one LoRA runs without per-image routing, which costs time."""
        taken: list[_Item] = []
        if self._mixed_loras:
            # sorted is stable: arrival order within each of the two groups
            candidates = sorted(candidates, key=lambda item: adapter_set(item.spec) != adapter_set(first.spec))
        for item in candidates:
            if item.key == first.key and self._fits([*batch, *taken], item):
                self._held.remove(item)
                taken.append(item)
        return taken

    def _has_room(self, batch: list[_Item]) -> bool:
        return sum(len(item.spec.seeds) for item in batch) < self._batching.max_images

    def _fits(self, batch: list[_Item], item: _Item) -> bool:
        images = sum(len(member.spec.seeds) for member in batch) + len(item.spec.seeds)
        pixel_steps = sum(member.pixel_steps for member in batch) + item.pixel_steps
        return images <= self._batching.max_images and pixel_steps <= self._batching.max_pixel_steps

    async def _run(self, batch: list[_Item]) -> None:
        if not batch:
            return
        if self._on_batch is not None:
            self._on_batch(sum(len(item.spec.seeds) for item in batch))
        call = functools.partial(self._generate_batch, batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            log.warning("a batch of %d jobs failed (%s); retrying them one by one", len(batch), exc)
            for item in batch:
                await self._run([item])
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _generate_batch(self, batch: list[_Item]) -> list[GeneratedImages]:
        """One pipeline call for the batch (on the generation thread), each job's callbacks getting its own share."""

        def on_step(step: int, total: int) -> None:
            for item in batch:
                item.on_step(step, total)

        def on_preview(index: int, preview: StepPreview) -> None:
            send = batch[index].on_preview
            if send is not None:
                send(preview)

        return self._generator.generate_batch(
            [item.spec for item in batch],
            on_step=on_step,
            on_preview=on_preview,
            # One job cancelled keeps its neighbours going (its images are dropped); all stopped stops the call.
            should_stop=lambda: all(item.should_stop() for item in batch),
        )


def _settle(item: _Item, *, error: BaseException) -> None:
    """Hand a job its failure, unless it gave up waiting (shutdown cancelled its task)."""
    if not item.future.done():
        item.future.set_exception(error)
