"""`rvbench bisect --good REV --bad REV --cell FILTER`: the first commit where one cell got significantly slower."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.commands.args import DEFAULT_REPORTS, check_output, exit_codes_help
from bench.errors import ExitCode, UsageError
from bench.regress import FAIL_PCT

ROUNDS = 3  # pairs of fresh processes (one per side) per tested commit
STEPS = 30  # timed steps per process, after the warm-up


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rvbench bisect`."""
    parser.epilog = ("FILTER: the cell's label words in any order, e.g. 'resnet18 rv bs1 32px fp32 inference' "
                     "(an arch or a unique part of one, an impl, bsN, Npx, a precision, a mode; bs1, 224px, fp32 "
                     "and inference unless given). " + exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE))
    parser.add_argument("--good", required=True, metavar="REV", help="a commit where the cell is fast")
    parser.add_argument("--bad", required=True, metavar="REV", help="a later commit where it is slow")
    parser.add_argument("--cell", required=True, metavar="FILTER", help="the one configuration to time")
    parser.add_argument("--device", default="cpu", help="where the cell runs (default cpu)")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                        help="the git checkout whose history is searched (default: this folder)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"pairs of fresh processes (one per side) for each tested commit (default {ROUNDS})")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"timed steps per process (default {STEPS})")
    parser.add_argument("--fail-pct", type=float, default=FAIL_PCT,
                        help=f"a commit is bad when significantly slower than --good by more than this many percent "
                        f"(default {FAIL_PCT:g})")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where bisect.json and bisect.html go (default reports/bisect/<time>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the input, search, print the trace and the answer, write bisect.json and bisect.html."""
    from bench.regress.bisect import bisect, parse_cell, resolve  # torch: not for --help
    from bench.config.cell import config_label
    from bench.report.bisect_page import bisect_text, write_bisect_html

    if args.rounds < 2 or args.steps < 5:
        raise UsageError(f"--rounds must be >= 2 and --steps >= 5, got {args.rounds} and {args.steps}")
    cell = parse_cell(args.cell, args.device)
    root, good, bad, commits = resolve(args.repo, args.good, args.bad)
    out = args.out or DEFAULT_REPORTS / "bisect" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    check_output(out, "--out", directory=True)
    print(f"bisect: {len(commits)} commits after {good.sha[:12]} up to {bad.sha[:12]}; timing "
          f"{config_label(cell, sep=' ')} in {args.rounds} pairs of processes", flush=True)
    result = bisect(root, good, bad, commits, cell, args.rounds, args.steps, args.fail_pct,
                    lambda t: print(f"bisect: {t.commit.sha[:12]} {t.verdict}", flush=True))
    print(bisect_text(result))
    (out / "bisect.json").write_text(json.dumps(result.record(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'bisect.json'} and {write_bisect_html(result, out / 'bisect.html', args.fail_pct)}")
    return ExitCode.OK if result.first_bad else ExitCode.FAILED
