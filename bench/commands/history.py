"""`rvbench history [DIR ...]`: every run under some folders as series in commit order, their steps, a trend page."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.commands.args import DEFAULT_REPORTS, check_page, exit_codes_help
from bench.errors import ExitCode, UsageError

DEFAULT_ROOT = DEFAULT_REPORTS / "runs"
DEFAULT_PAGE = "history.html"  # next to the first root: reports/history.html for reports/runs
# What `rvbench history` needs beyond rvbench's own dependencies: pyproject.toml's `history` extra.
PACKAGES = ("duckdb", "ruptures")
INSTALL = "pip install 'rvbench[history]'"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench history`."""
    parser.epilog = (f"Needs {' and '.join(PACKAGES)}: {INSTALL}. " + exit_codes_help(ExitCode.OK, ExitCode.USAGE))
    parser.add_argument("roots", type=Path, nargs="*", metavar="DIR",
                        help=f"folders whose run directories (at any depth) are read (default: {DEFAULT_ROOT})")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"where to write the trend page (default: {DEFAULT_PAGE} next to the first DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the runs, print the steps table, write the trend page."""
    try:
        from bench.regress.history import load_history  # duckdb, ruptures, pandas: not for --help
    except ModuleNotFoundError as exc:
        if exc.name not in PACKAGES:
            raise
        raise UsageError(f"needs {' and '.join(PACKAGES)}, which are not installed: {INSTALL}") from None
    from bench.report.history_page import history_text, write_history
    from bench.results.store import write_atomically

    roots = args.roots or [DEFAULT_ROOT]
    history = load_history(roots)
    out = check_page(args.out, Path(os.path.abspath(roots[0])).parent / DEFAULT_PAGE, "the history page")
    print(history_text(history))
    record = out.with_suffix(".json")
    write_atomically(record, lambda p: p.write_text(json.dumps(history.record(), indent=2) + "\n", encoding="utf-8"))
    print(f"wrote {write_history(history, out)} and {record}")
    return ExitCode.OK
