"""The sdqueue worker: consume → verify → validate → load input → generate → encode → upload → publish → ack.

`run_worker` is imported lazily so that light modules (errors, verify) do not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdqueue.worker.worker import run_worker

__all__ = ["run_worker"]


def __getattr__(name: str) -> Any:
    if name == "run_worker":
        from sdqueue.worker.worker import run_worker  # lazy: torch loads only when the worker runs

        return run_worker
    raise AttributeError(name)
