"""`rvbench models`: list the registered (arch, impl) pairs."""

from __future__ import annotations

import argparse
import dataclasses
import json

from bench.errors import ExitCode
from bench.report.text import format_table

_COLUMNS = ("arch", "impl", "family", "lib_name", "image_size", "tv_weights")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every registered entry, as a table or as JSON."""
    from bench.models import list_entries  # torch: not for --help

    rows = [dataclasses.asdict(e) for e in list_entries()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return ExitCode.OK
    print(format_table(_COLUMNS, [[r[c] for c in _COLUMNS] for r in rows]))
    return ExitCode.OK
