"""`rvbench report RUN_DIR`: (re)write the HTML report of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import write_report


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench report`."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory, e.g. reports/latest")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write RUN_DIR/index.html and print its path."""
    print(write_report(args.run_dir))
    return 0
