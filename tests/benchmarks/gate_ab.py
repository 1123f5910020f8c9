"""A/B gate across commits, in the style of asv continuous: `make gate-ab [BASE=rev]`.

A thin caller of bench.regress.ab (worktree, alternating fresh processes, the decision), which `rvbench
bisect` shares. The pytest-benchmark suite (test_speed.py) runs for BASE and for this checkout's working
tree (HEAD), on the same machine in the same job, so both sides share the machine and its noise. Each
side runs from a fresh temporary worktree made alike (bench.regress.ab.fresh_sides: paths of one length,
byte-compiled first), never HEAD from the checkout itself, which measured identical code faster. The
sides alternate in fresh processes, ROUNDS times each (base then head, head then base, ...), timed in
process CPU time on one thread (conftest's CPU_THREADS).
Each process gives one median per benchmark; per benchmark, the gate compares the ROUNDS medians
of each side with a Mann-Whitney U test (bench.regress.compare.delta, the rule `rvbench compare`
uses), adjusts the benchmarks' p-values together (Holm: with 7 benchmarks at 0.01 each, identical trees
would get a verdict in about 6% of gate runs; adjusted, in at most 1%) and fails only on a regression
that is significant (adjusted p < 0.01) AND larger than FAIL_PCT.
A sample too small to ever reach significance is "underpowered", which never fails. Each HEAD speed
÷ BASE is printed with its 95% interval (bench.intervals.ratio_ci, as `rvbench compare` prints it): how
large the change could be, which the test alone does not say.

It catches what the same-run ratio gates cannot: a slowdown every implementation shares (the
harness's step, precision handling, input preparation) and an rv regression that the references
share. It cannot catch a change smaller than FAIL_PCT, nor one the budgeted model subset (SELECT)
does not run.

Both sides' results are pytest-benchmark JSON files in the output directory
(`pytest-benchmark compare OUT/*.json` shows them); the table is printed and written as
gate-ab.html beside them, in the report's style. Exit codes: 0 pass (or no base to compare),
1 regression, 2 bad input or a HEAD suite that does not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.regress import FAIL_PCT
from bench.regress.ab import alternating, compare_sides, fresh_sides, git, run_in_tree
from bench.report.compare_page import comparison_text, write_html

SUITE = "tests/benchmarks/test_speed.py"
# The budgeted subset (pytest -k): every impl of the smallest ResNet and ViT at inference, and the
# ViT's train step (a ResNet train step costs as much as all the rest). 2 x ROUNDS processes of it
# take about 5 minutes on 2 cores.
SELECT = "inference and (resnet18 or vit_tiny) or train and vit_tiny"
# Processes per side. The SELECT subset is 7 benchmarks, whose p-values are adjusted together (Holm), so the
# smallest must reach 0.01 / 7: 8 against 8 does with up to 3 of the 64 pairs out of order (6 against 6
# cannot at all: its smallest p is 0.0022).
ROUNDS = 8
SUITE_TIMEOUT_S = 300


def run_suite(tree: Path, out: Path, device: str) -> subprocess.CompletedProcess:
    """One fresh process running the suite's subset in `tree` (its own bench and tests), JSON to `out`."""
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE, "-k", SELECT,
               "--device", device, f"--benchmark-json={out}"]
    if device == "cpu":
        command.append("--benchmark-timer=time.process_time")
    return run_in_tree(tree, command, SUITE_TIMEOUT_S)


def medians_ms(path: Path) -> dict[str, tuple[float, int]]:
    """benchmark name -> (median step in ms, batch size) from one pytest-benchmark JSON file."""
    data = json.loads(path.read_text())
    return {b["name"]: (b["stats"]["median"] * 1e3, int(b["extra_info"].get("batch_size", 1)))
            for b in data["benchmarks"]}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gate_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="commit to compare against (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"processes per side (default {ROUNDS})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default reports/gate-ab/<time>)")
    parser.add_argument("--fail-pct", type=float, default=FAIL_PCT,
                        help=f"fail on a significant p50 slowdown beyond this (default {FAIL_PCT:g})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the gate; print the table and write gate-ab.html; return the exit code."""
    args = _parse(argv)
    if args.rounds < 2:
        print(f"gate-ab: error: --rounds must be >= 2, got {args.rounds}", file=sys.stderr)
        return 2
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel") or ".")
    base = git(root, "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    if base is None:
        print(f"gate-ab: no base to compare: {args.base!r} is not a commit here (a first commit?); pass")
        return 0
    out = args.out or root / "reports" / "gate-ab" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    head_name = (git(root, "rev-parse", "--short=12", "HEAD") or "HEAD") + (
        " (dirty)" if git(root, "status", "--porcelain") else "")  # HEAD's side has them all (fresh_sides)
    sides: dict[str, list[dict[str, tuple[float, int]]]] = {"base": [], "head": []}
    with fresh_sides(root, base, prefix="gate-ab-") as trees:
        if not (trees["a"] / SUITE).exists():
            print(f"gate-ab: no base to compare: {base[:12]} has no {SUITE}; pass")
            return 0
        for r, ab_side in alternating(args.rounds):
            side = "base" if ab_side == "a" else "head"
            path = out / f"{side}-r{r}.json"
            done = run_suite(trees[ab_side], path, args.device)
            if done.returncode != 0 or not path.exists():
                tail = (done.stdout + done.stderr)[-2000:]
                if side == "base":
                    print(f"gate-ab: no base to compare: the suite of {base[:12]} does not run; pass\n{tail}")
                    return 0
                print(f"gate-ab: error: the HEAD suite failed (exit {done.returncode}):\n{tail}", file=sys.stderr)
                return 2
            sides[side].append(medians_ms(path))
            print(f"gate-ab: round {r + 1}/{args.rounds} {side} done", flush=True)
    cmp = compare_sides(sides["base"], sides["head"], base[:12], head_name)
    if not cmp.cells:
        print(f"gate-ab: no base to compare: {base[:12]} and HEAD share no benchmark; pass")
        return 0
    print(comparison_text(cmp))
    print(f"wrote {write_html(cmp, out / 'gate-ab.html')} (pytest-benchmark compare {out}/*.json shows both sides)")
    reason = cmp.failure(args.fail_pct)
    if reason:
        print(f"gate-ab: FAIL: {reason}; BASE {base[:12]}, HEAD {head_name}")
        return 1
    print(f"gate-ab: pass: no significant slowdown beyond {args.fail_pct:g}% against {base[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
