"""The fleet as the bridge sees it: the workers' latest heartbeats, and the models they serve (`GET /v1/models`).

A worker is forgotten once it has been silent for `HEARTBEATS_MISSED` of its own intervals, or as soon as it says
it is draining: either way it takes no new job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sdqueue.bridge._models import ModelInfo, ModelList
from sdqueue.contracts import FAMILY_DEFAULTS, WorkerHeartbeat

HEARTBEATS_MISSED = 3


class FleetView:
    """The latest heartbeat of each live worker, by worker name."""

    def __init__(self) -> None:
        self._heard: dict[str, tuple[float, WorkerHeartbeat]] = {}

    def note(self, heartbeat: WorkerHeartbeat) -> None:
        """Take a worker's heartbeat: it replaces the worker's previous one; a draining worker leaves the view."""
        if heartbeat.state == "draining":
            self._heard.pop(heartbeat.worker, None)
        else:
            self._heard[heartbeat.worker] = (time.monotonic(), heartbeat)

    def workers(self) -> list[WorkerHeartbeat]:
        """The workers heard from within their last few intervals, by name; the silent ones are dropped."""
        now = time.monotonic()
        silent = [name for name, (at, beat) in self._heard.items() if now - at > HEARTBEATS_MISSED * beat.interval_s]
        for name in silent:
            del self._heard[name]
        return [beat for _, (_, beat) in sorted(self._heard.items())]


def list_models(fleet: Sequence[WorkerHeartbeat]) -> ModelList:
    """Each alias the fleet serves, with its family's defaults, its schedulers and how many workers serve it."""
    aliases = sorted({alias for heartbeat in fleet for alias in heartbeat.models})
    return ModelList(models=[_describe(alias, fleet) for alias in aliases])


def _describe(alias: str, fleet: Sequence[WorkerHeartbeat]) -> ModelInfo:
    serving = [heartbeat for heartbeat in fleet if alias in heartbeat.models]
    families = {heartbeat.families[alias] for heartbeat in serving if alias in heartbeat.families}
    # Workers that serve one alias from different sources disagree on its family: then it has none to show.
    family = families.pop() if len(families) == 1 else None
    schedulers = [set(heartbeat.schedulers[alias]) for heartbeat in serving if alias in heartbeat.schedulers]
    return ModelInfo(
        alias=alias,
        family=family,
        defaults=None if family is None else FAMILY_DEFAULTS[family],
        # Only names every worker of the alias accepts: a job may land on any of them.
        schedulers=sorted(set.intersection(*schedulers)) if schedulers else None,
        workers=len(serving),
    )
