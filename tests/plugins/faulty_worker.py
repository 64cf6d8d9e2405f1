"""`python -m tests.plugins.faulty_worker`: the real worker, with faults injected at two stage seams.

The fault suite starts it instead of `python -m sdqueue worker`; it runs the same `main`. Faults, from the
environment (read here only, and removed before the worker reads its settings):

- `SDQUEUE_TEST_EXIT_AFTER_UPLOAD=1`: once a job's images are uploaded, the process exits 137 at once, as under
  kill -9, before the job's record or result exists.
- `SDQUEUE_TEST_FAIL_PROMPT=<marker>`: generation raises `RuntimeError` (an unexpected, retryable error) for every
  spec whose prompt contains the marker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import pytest

from sdqueue.worker import pipeline
from sdqueue.worker.__main__ import main
from sdqueue.worker.batching import Batcher
from sdqueue.worker.generate import GeneratedImages, GenerationSpec

EXIT_AFTER_UPLOAD = "SDQUEUE_TEST_EXIT_AFTER_UPLOAD"
FAIL_PROMPT = "SDQUEUE_TEST_FAIL_PROMPT"
CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

P = ParamSpec("P")
T = TypeVar("T")
Generate = Callable[Concatenate[Batcher, GenerationSpec, P], Coroutine[Any, Any, GeneratedImages]]

log = logging.getLogger(__name__)


def exiting_after(upload: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap the upload stage so the process dies as soon as it has returned."""

    async def upload_then_exit(*args: P.args, **kwargs: P.kwargs) -> T:
        await upload(*args, **kwargs)
        log.critical("test fault: exiting between upload and record")
        os._exit(CRASH_EXIT_CODE)

    return upload_then_exit


def failing_for(marker: str, generate: Generate[P]) -> Generate[P]:
    """Wrap `Batcher.generate` so a spec whose prompt holds `marker` raises instead of generating."""

    async def generate_or_fail(
        batcher: Batcher, spec: GenerationSpec, /, *args: P.args, **kwargs: P.kwargs
    ) -> GeneratedImages:
        if marker in spec.prompt:
            raise RuntimeError("test fault: generation fails for this prompt")
        return await generate(batcher, spec, *args, **kwargs)

    return generate_or_fail


def inject_faults() -> None:
    """Wrap the seams the environment asks for, and take those variables out of the worker's sight."""
    seams = pytest.MonkeyPatch()  # raises at once if a seam was renamed, instead of injecting nothing
    if os.environ.pop(EXIT_AFTER_UPLOAD, "") == "1":
        seams.setattr(pipeline, "upload_images", exiting_after(pipeline.upload_images))
    marker = os.environ.pop(FAIL_PROMPT, "")
    if marker:
        seams.setattr(Batcher, "generate", failing_for(marker, Batcher.generate))


if __name__ == "__main__":
    inject_faults()
    raise SystemExit(main())
