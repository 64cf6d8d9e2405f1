"""`sdqueue models`: what the fleet serves, read from the workers' heartbeats."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence

from sdqueue.cli._output import format_table
from sdqueue.client import SdqueueClient
from sdqueue.config import load_settings
from sdqueue.contracts import FAMILY_DEFAULTS, WorkerHeartbeat


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `models`."""
    models = commands.add_parser("models", help="list what the fleet serves, from the workers' heartbeats")
    models.add_argument("--listen", type=float, default=12.0, help="seconds to listen (default: 12)")
    models.set_defaults(handler=lambda args: asyncio.run(list_models(listen_s=args.listen)))


async def list_models(*, listen_s: float) -> int:
    """Print the fleet's tables; exit status 1 when no worker was heard from."""
    return await print_heard(format_fleet, listen_s=listen_s)


async def print_heard(describe: Callable[[Sequence[WorkerHeartbeat]], str], *, listen_s: float) -> int:
    """Listen to the workers' heartbeats for `listen_s`, print what `describe` makes of them; exit status 1 when
    no worker was heard from."""
    async with SdqueueClient(load_settings()) as client:
        fleet = await client.fleet(listen_s=listen_s)
    print(describe(fleet))
    return 0 if fleet else 1


def format_fleet(fleet: Sequence[WorkerHeartbeat]) -> str:
    """A table of model aliases (family and its defaults, who serves each, where it is loaded), then one of workers."""
    if not fleet:
        return "no worker heard from"
    aliases = sorted({alias for heartbeat in fleet for alias in heartbeat.models})
    models = [["MODEL", "FAMILY", "DEFAULTS", "SERVED BY", "LOADED ON"]] + [
        [
            alias,
            alias_families(fleet, alias),
            family_defaults(alias_families(fleet, alias)),
            ",".join(h.worker for h in fleet if alias in h.models),
            ",".join(h.worker for h in fleet if alias in h.loaded) or "-",
        ]
        for alias in aliases
    ]
    workers = [["WORKER", "STATE", "DEVICE", "IN FLIGHT", "LOADED"]] + [
        [h.worker, h.state, h.device, str(h.in_flight), ",".join(h.loaded) or "-"] for h in fleet
    ]
    return f"{format_table(models)}\n\n{format_table(workers)}"


def alias_families(fleet: Sequence[WorkerHeartbeat], alias: str) -> str:
    """The families workers report for `alias`: one, several (workers serve different sources) or `-` (unknown)."""
    families = sorted({h.families[alias] for h in fleet if alias in h.families})
    return ",".join(families) or "-"


def family_defaults(family: str) -> str:
    """A family's native size and guidance (`512x512@7.5`), or `-` for none or several."""
    for name, defaults in FAMILY_DEFAULTS.items():
        if name == family:
            return f"{defaults.width}x{defaults.height}@{defaults.guidance_scale:g}"
    return "-"
