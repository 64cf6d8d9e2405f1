"""The `sdqueue` command. Client commands stay light; worker, bridge and dev-stack commands import lazily."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from sdqueue.cli import adapters, bridge, contract, fleet, generate, services, tokens, users
from sdqueue.cli._output import print_error
from sdqueue.contracts.errors import SdqueueError

# Each group registers its own subcommands, in the order `sdqueue --help` lists them.
COMMAND_GROUPS = (generate, tokens, services, adapters, fleet, contract, bridge, users)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdqueue` console script; returns the exit status (1 on a client error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SdqueueError as exc:
        return print_error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    """The full command tree."""
    parser = argparse.ArgumentParser(prog="sdqueue", description="Stable Diffusion over RabbitMQ and S3.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser
