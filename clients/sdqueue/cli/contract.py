"""`sdqueue contract write`: regenerate (or check) the schemas, the AsyncAPI file and the configuration reference."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `contract write`."""
    contract = commands.add_parser("contract", help="contract files").add_subparsers(required=True, metavar="ACTION")
    write = contract.add_parser("write", help="regenerate docs/schemas, docs/asyncapi.yaml, docs/configuration.md")
    write.add_argument("--root", type=Path, default=Path())
    write.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    write.set_defaults(handler=write_contract)


def write_contract(args: argparse.Namespace) -> int:
    """Write the contract files under `args.root` and print each; with `--check`, print the stale ones and exit 1."""
    from sdqueue.config.reference import stale_configuration_doc, write_configuration_doc
    from sdqueue.contracts.schema import stale_contract_files, write_contract_files

    if args.check:
        stale = stale_contract_files(args.root) + (
            ["docs/configuration.md"] if stale_configuration_doc(args.root) else []
        )
        for name in stale:
            print(f"stale: {name}")
        return 1 if stale else 0
    for written in [*write_contract_files(args.root), write_configuration_doc(args.root)]:
        print(written)
    return 0
