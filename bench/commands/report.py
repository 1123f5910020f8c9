"""`rvbench report RUN_DIR`: (re)write the HTML report of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import check_page
from bench.errors import ExitCode
from bench.report import REPORT_NAME, write_report


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench report`."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory, e.g. reports/latest")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the page (default RUN_DIR/index.html); for a read-only run directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the page (checked writable before any work) and print its path."""
    from bench.results import check_run_dir  # pandas: not for --help

    check_run_dir(args.run_dir)
    out = check_page(args.out, args.run_dir / REPORT_NAME, "RUN_DIR's page")
    print(write_report(args.run_dir, out))
    return ExitCode.OK
