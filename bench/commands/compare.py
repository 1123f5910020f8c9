"""`rvbench compare RUN_A RUN_B`: cell-by-cell comparison with a significance test."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import check_page, exit_codes_help, finite_float, positive_float
from bench.errors import ExitCode, UsageError
from bench.regress import DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT

DEFAULT_PAGE = "compare.html"  # next to RUN_B, the run it judges, not wherever the command ran


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench compare`."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE)
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="baseline run directory")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="run directory compared against RUN_A")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the HTML page (default: RUN_B/{DEFAULT_PAGE})")
    parser.add_argument("--alpha", type=positive_float, default=DEFAULT_ALPHA,
                        help="significance level of the Mann-Whitney U test")
    parser.add_argument("--threshold", type=finite_float, default=DEFAULT_THRESHOLD_PCT, metavar="PCT",
                        help="smallest p50 change (%%) that counts as improved/regressed")
    parser.add_argument("--fail-on-regression", type=finite_float, default=None, metavar="PCT",
                        help="exit 1 if a significant regression slows a cell's p50 by more than PCT %%, "
                             "a cell that measured in A fails in B, or no cell was measured in both runs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the comparison table, write the HTML page, and apply --fail-on-regression."""
    from bench.regress.compare import compare_runs  # pandas, scipy: not for --help
    from bench.report.compare_page import comparison_text, write_html
    from bench.results import check_run_dir

    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must be between 0 and 1 (exclusive), got {args.alpha}")
    if args.threshold < 0 or (args.fail_on_regression is not None and args.fail_on_regression < 0):
        raise UsageError("--threshold and --fail-on-regression are percentages >= 0")
    for run_dir in (args.run_a, args.run_b):
        check_run_dir(run_dir)
    out = check_page(args.out, args.run_b / DEFAULT_PAGE, "RUN_B's page")
    cmp = compare_runs(args.run_a, args.run_b, alpha=args.alpha, threshold_pct=args.threshold)
    print(comparison_text(cmp))
    print(f"wrote {write_html(cmp, out)}")
    reason = cmp.failure(args.fail_on_regression) if args.fail_on_regression is not None else None
    if reason:
        print(f"--fail-on-regression: {reason}: exit {int(ExitCode.FAILED)}")
        return ExitCode.FAILED
    return ExitCode.OK
