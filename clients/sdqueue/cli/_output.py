"""What several commands print: plain-text tables on stdout and `sdqueue: <reason>` on stderr."""

from __future__ import annotations

import sys


def print_error(message: str) -> int:
    """Print `sdqueue: <message>` to stderr and return exit status 1."""
    print(f"sdqueue: {message}", file=sys.stderr)
    return 1


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
