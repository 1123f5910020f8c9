"""`rvbench report RUN_DIR`: (re)write the HTML report of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import check_output
from bench.errors import ExitCode, UsageError
from bench.report import REPORT_NAME, write_report


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench report`."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory, e.g. reports/latest")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the page (default RUN_DIR/index.html); for a read-only run directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the page (checked writable before any work) and print its path."""
    if args.out:
        check_output(args.out, "--out")
    else:
        try:
            check_output(args.run_dir / REPORT_NAME, "RUN_DIR's page")
        except UsageError as exc:
            raise UsageError(f"{exc}; write it elsewhere with --out FILE") from None
    print(write_report(args.run_dir, args.out))
    return ExitCode.OK
