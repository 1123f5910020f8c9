"""A/B gate across commits, in the style of asv continuous: `make gate-ab [BASE=rev]`.

The pytest-benchmark suite (test_speed.py) runs for BASE (checked out in a temporary git worktree)
and for this checkout's working tree (HEAD), on the same machine in the same job, so both sides
share the machine and its noise. The sides alternate in fresh processes, ROUNDS times each (base
then head, head then base, ...), timed in process CPU time on one thread (conftest's CPU_THREADS).
Each process gives one median per benchmark; per benchmark, the gate compares the ROUNDS medians
of each side with a Mann-Whitney U test (bench.regress.compare.delta, the rule `rvbench compare`
uses) and fails only on a regression that is significant (p < 0.01) AND larger than FAIL_PCT.
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
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.regress import DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT
from bench.regress.compare import VERDICTS, Comparison, delta
from bench.report.compare_page import comparison_text, write_html

SUITE = "tests/benchmarks/test_speed.py"
# The budgeted subset (pytest -k): every impl of the smallest ResNet and ViT at inference, and the
# ViT's train step (a ResNet train step costs as much as all the rest). 2 x ROUNDS processes of it
# fit the gate's budget of about 4 minutes on 2 cores.
SELECT = "inference and (resnet18 or vit_tiny) or train and vit_tiny"
# Processes per side. 6 against 6 reaches p < 0.01 with up to 2 of the 36 pairs out of order (5
# against 5 needs a perfect separation, which load on a shared machine often spoils).
ROUNDS = 6
FAIL_PCT = 10.0  # a significant p50 slowdown beyond this fails the gate
SUITE_TIMEOUT_S = 300


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@contextlib.contextmanager
def worktree(root: Path, commit: str) -> Iterator[Path]:
    """`commit` checked out (detached) in a temporary worktree, removed again whatever happens."""
    with tempfile.TemporaryDirectory(prefix="gate-ab-") as tmp:
        path = Path(tmp) / "base"
        if _git(root, "worktree", "add", "--detach", "--quiet", str(path), commit) is None:
            raise RuntimeError(f"git worktree add {commit} failed")
        try:
            yield path
        finally:
            _git(root, "worktree", "remove", "--force", str(path))


def run_suite(tree: Path, out: Path, device: str) -> subprocess.CompletedProcess:
    """One fresh process running the suite's subset in `tree` (its own bench and tests), JSON to `out`."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE, "-k", SELECT,
               "--device", device, f"--benchmark-json={out}"]
    if device == "cpu":
        command.append("--benchmark-timer=time.process_time")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)


def medians_ms(path: Path) -> dict[str, tuple[float, int]]:
    """benchmark name -> (median step in ms, batch size) from one pytest-benchmark JSON file."""
    data = json.loads(path.read_text())
    return {b["name"]: (b["stats"]["median"] * 1e3, int(b["extra_info"].get("batch_size", 1)))
            for b in data["benchmarks"]}


def compare_sides(base: list[dict[str, tuple[float, int]]], head: list[dict[str, tuple[float, int]]],
                  base_name: str, head_name: str) -> Comparison:
    """Per benchmark both sides ran: the rounds' medians of each side compared by `delta`."""
    cmp = Comparison(Path(base_name), Path(head_name), DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT,
                     f"BASE {base_name}", f"HEAD {head_name}")
    names_a = set().union(*base) if base else set()
    names_b = set().union(*head) if head else set()
    for name in sorted(names_a | names_b):
        if name not in names_b:
            cmp.only_a.append(name)
        elif name not in names_a:
            cmp.only_b.append(name)
        else:
            a = [r[name][0] for r in base if name in r]
            b = [r[name][0] for r in head if name in r]
            cmp.cells.append(delta(name, a, b, head[0][name][1]))
    cmp.cells.sort(key=lambda c: (VERDICTS.index(c.verdict), -abs(c.change_pct)))
    return cmp


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
    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel") or ".")
    base = _git(root, "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    if base is None:
        print(f"gate-ab: no base to compare: {args.base!r} is not a commit here (a first commit?); pass")
        return 0
    out = args.out or root / "reports" / "gate-ab" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    head_name = (_git(root, "rev-parse", "--short=12", "HEAD") or "HEAD") + (
        " (dirty)" if _git(root, "status", "--porcelain", "--untracked-files=no") else "")
    sides: dict[str, list[dict[str, tuple[float, int]]]] = {"base": [], "head": []}
    with worktree(root, base) as base_tree:
        if not (base_tree / SUITE).exists():
            print(f"gate-ab: no base to compare: {base[:12]} has no {SUITE}; pass")
            return 0
        trees = {"base": base_tree, "head": root}
        for r in range(args.rounds):
            for side in ("base", "head") if r % 2 == 0 else ("head", "base"):
                path = out / f"{side}-r{r}.json"
                done = run_suite(trees[side], path, args.device)
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
