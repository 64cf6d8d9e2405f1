"""The fleet as the bridge sees it: the workers' latest heartbeats, the models they serve (`GET /v1/models`) and
their named adapters (`GET /v1/adapters`, and the sha256 a request by name is pinned to).

A worker is forgotten once it has been silent for `HEARTBEATS_MISSED` of its own intervals, or as soon as it says
it is draining: either way it takes no new job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sdqueue.bridge._models import AdapterChoice, AdapterInfo, AdapterList, ModelInfo, ModelList
from sdqueue.contracts import FAMILY_DEFAULTS, ErrorCode, NamedAdapter, WorkerHeartbeat
from sdqueue.contracts.adapters import sha256_of_key
from sdqueue.contracts.errors import BridgeError

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


def list_adapters(fleet: Sequence[WorkerHeartbeat]) -> AdapterList:
    """Each named adapter live workers hold, by name and file, with the aliases their workers serve."""
    holders: dict[NamedAdapter, list[WorkerHeartbeat]] = {}
    for heartbeat in fleet:
        for adapter in heartbeat.adapters:
            holders.setdefault(adapter, []).append(heartbeat)
    return AdapterList(
        adapters=[
            AdapterInfo(
                **adapter.model_dump(),
                models=sorted({alias for heartbeat in serving for alias in heartbeat.models}),
                workers=len(serving),
            )
            for adapter, serving in sorted(holders.items(), key=lambda item: (item[0].name, item[0].sha256))
        ]
    )


def pin_adapters(
    choices: Sequence[AdapterChoice], *, model: str, fleet: Sequence[WorkerHeartbeat]
) -> list[dict[str, object]]:
    """The wire form of a caller's adapters, each pinned to one file's sha256: a name to the file the model's live
    workers announce under it (and its kind), a key to its given sha256 or the one its file name carries.

    Raises:
        BridgeError: `invalid_request` for a name the model's workers do not hold, a name held as several files
            without a sha256 to choose one, or a key without a sha256.
    """
    serving = [heartbeat for heartbeat in fleet if model in heartbeat.models]
    return [_pin(choice, model=model, serving=serving) for choice in choices]


def _pin(choice: AdapterChoice, *, model: str, serving: Sequence[WorkerHeartbeat]) -> dict[str, object]:
    fields = choice.model_dump(exclude_none=True)
    if choice.key is not None:
        sha256 = choice.sha256 or sha256_of_key(choice.key)
        if sha256 is None:
            raise BridgeError(ErrorCode.INVALID_REQUEST, f"adapter {choice.key} needs its sha256")
        return fields | {"sha256": sha256}
    held = {a for heartbeat in serving for a in heartbeat.adapters if a.name == choice.name}
    matching = [a for a in held if choice.sha256 in (None, a.sha256) and choice.kind in (None, a.kind)]
    if not matching:
        raise BridgeError(ErrorCode.INVALID_REQUEST, f"no live worker of model {model!r} holds adapter {choice.name!r}")
    if len(matching) > 1:
        raise BridgeError(
            ErrorCode.INVALID_REQUEST, f"workers hold different files as adapter {choice.name!r}: give its sha256"
        )
    return fields | {"sha256": matching[0].sha256, "kind": matching[0].kind}
