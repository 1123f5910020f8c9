"""`rvbench crosscheck RUN_DIR`: the run's cells timed again as timm's benchmark.py times them
(bench.checks.crosscheck), printed cell by cell and written to RUN_DIR/crosscheck.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import check_output, exit_codes_help
from bench.errors import ExitCode, UsageError


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench crosscheck`."""
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.NOTHING_MEASURED)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory (its ok cells of round 0 are timed again on their device)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Cross-check every ok cell; FAILED when a cell could not run, NOTHING_MEASURED without ok cells."""
    from bench.checks.crosscheck import CSV_NAME, crosscheck
    from bench.results import load_run

    df = load_run(args.run_dir)
    if "timer" in df and (df["timer"] == "process-cpu").any():
        raise UsageError(f"{args.run_dir} timed its steps in process CPU time (--process-time); timm's loop times "
                         "wall time, so the two would not compare")
    check_output(args.run_dir / CSV_NAME, "RUN_DIR")
    table = crosscheck(args.run_dir, df)
    if not table:
        print(f"crosscheck: {args.run_dir} has no ok cells to time")
        return ExitCode.NOTHING_MEASURED
    failed = [entry for entry in table if entry["status"] != "ok"]
    print(f"crosscheck: {len(table) - len(failed)} of {len(table)} cells timed; wrote {args.run_dir / CSV_NAME}")
    return ExitCode.FAILED if failed else ExitCode.OK
