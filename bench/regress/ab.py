"""A/B timing across commits, shared by `make gate-ab` (tests/benchmarks/gate_ab.py) and `rvbench bisect`.

A revision is checked out (detached) in a temporary git worktree (`worktree`), removed again whatever
happens, Ctrl-C included. Each side runs in fresh processes of its own tree (`run_in_tree`: the tree
first on PYTHONPATH, so its own `bench` and `rv_models` are imported), and the two sides alternate
(`alternating`: A then B, B then A, ...) so drift of the machine falls on both alike. The decision is
`bench.regress.compare.delta`, the rule `rvbench compare` uses: "regressed" only when a Mann-Whitney U
test gives p < alpha AND the median moved by at least the threshold, with B speed ÷ A's 95% interval.

`time_pair` times one cell in a fresh process of each tree, the two alive together and stepped in
lockstep, through each tree's own `prepared_cell`, on one thread in process CPU time, each step relative to
a fixed reference computation timed right after it (so load from other processes on the machine moves
neither side more than the other); a tree where the cell cannot run (an import or build error, the model
missing, or a build that hangs past READY_TIMEOUT_S, a step past REPLY_TIMEOUT_S) raises `CellFailed`.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO
from pathlib import Path

from bench.regress import DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT
from bench.regress.compare import VERDICTS, CellDelta, Comparison, delta, holm, smallest_p

SIDES = ("a", "b")
# How long a probe may take to import, build and warm up its cell (READY_TIMEOUT_S: WARMUP_STEPS steps of a large
# train cell on one thread take minutes), and to time one step, before its side counts as not running (a hang:
# its commit is skipped, as one that does not build is).
READY_TIMEOUT_S = 1800.0
REPLY_TIMEOUT_S = 300.0
WARMUP_STEPS = 40  # untimed steps first: the first steps of a fresh process are slower (allocator, caches)
# The fresh process: the tree's own prepared_cell on one thread; after the warm-up it says "ready", then
# times one step per line it reads, in process CPU time divided by the time of a fixed reference
# computation (plain torch convolutions, no code of the tree) run right after it, so what moves both (the
# CPU's clock, a busy sibling core) cancels. A sample is a step's cost in reference computations.
PROBE = """
import json, os, sys, time
reply = os.fdopen(os.dup(1), "w", buffering=1)  # the replies; anything else written to stdout goes to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
import torch
torch.set_num_threads(1)
from bench.config.cell import Cell
from bench.execute.prepare import prepared_cell
cell, warmup = Cell(**json.loads(sys.argv[1])), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
x, w = torch.randn(1, 64, 16, 16, generator=g), torch.randn(64, 64, 3, 3, generator=g) * 0.05
def reference():
    with torch.inference_mode():
        y = x
        for _ in range(6):
            y = torch.relu(torch.nn.functional.conv2d(y, w, padding=1))
def timed(fn):
    start = time.process_time()
    fn()
    return time.process_time() - start
with prepared_cell(cell) as built:
    for _ in range(warmup):
        built.step()
        reference()
    print("ready", file=reply)
    for _ in sys.stdin:
        print(timed(built.step) / timed(reference), file=reply)
    del built
"""


class CellFailed(RuntimeError):
    """The cell did not run in a tree; the message is the last line it wrote (its error), `side` the
    A/B side whose tree it was ("" when not known)."""

    def __init__(self, message: str, side: str = "") -> None:
        super().__init__(message)
        self.side = side


def git(root: Path, *args: str) -> str | None:
    """`git -C root args...`'s stripped stdout, or None when git fails (not a repository, unknown rev)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError:  # no git installed
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@contextlib.contextmanager
def worktree(root: Path, commit: str, prefix: str = "rvbench-ab-") -> Iterator[Path]:
    """`commit` checked out (detached) in a temporary worktree of `root`, removed again whatever happens."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "tree"
        if git(root, "worktree", "add", "--detach", "--quiet", str(path), commit) is None:
            raise RuntimeError(f"git worktree add {commit} failed")
        try:
            yield path
        finally:
            git(root, "worktree", "remove", "--force", str(path))


@contextlib.contextmanager
def working_tree(root: Path, prefix: str = "rvbench-ab-") -> Iterator[Path]:
    """This checkout's working tree (what HEAD would be if it were committed) as a temporary worktree like
    `worktree`'s: tracked changes through `git stash create` (a commit object; no ref, index or file of the
    checkout moves), and the untracked files git does not ignore copied in. So the side of HEAD runs from a
    fresh tree made as the base's is, not from the checkout (see `fresh_sides`)."""
    snapshot = git(root, "stash", "create")
    if snapshot is None:  # unmerged paths, a held index.lock: timing HEAD instead would mislabel the side
        raise RuntimeError(f"git stash create failed in {root}: cannot snapshot the working tree")
    snapshot = snapshot or "HEAD"  # nothing uncommitted
    with worktree(root, snapshot, prefix) as tree:
        listed = git(root, "ls-files", "--others", "--exclude-standard", "-z") or ""
        for name in filter(None, listed.split("\0")):
            if (root / name).is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, tree / name)
        yield tree


def precompile(tree: Path) -> None:
    """Byte-compile the tree's Python files now, so no side's first process compiles them inside its run."""
    compileall.compile_dir(tree, quiet=1, workers=1)


@contextlib.contextmanager
def fresh_sides(root: Path, base: str, prefix: str = "rvbench-ab-") -> Iterator[dict[str, Path]]:
    """The two sides of an A/B comparison, `base` ("a") against this checkout's working tree ("b"), made alike:
    each a fresh temporary worktree at a path of the same length, byte-compiled before the first process.

    Timing HEAD in the checkout itself and BASE in a fresh worktree made identical code measure differently:
    with both at one commit, the vit_tiny rv forward measured 7% faster in the checkout at p = 0.004 (its six
    processes all within 5.39-5.51 ms, the worktree's 5.44-7.73), and as fast with both in worktrees (p = 0.49).
    What a checkout differs in (its path, and so the sizes of the environment and of every path string the
    process allocates, which shift where its buffers land; its .pyc files; its pages in the page cache) is
    the same on both sides here."""
    with worktree(root, base, prefix) as a, working_tree(root, prefix) as b:
        for tree in (a, b):
            precompile(tree)
        yield {"a": a, "b": b}


def alternating(rounds: int) -> Iterator[tuple[int, str]]:
    """(round, side) in the order the sides run: a, b; b, a; a, b; ... so neither always goes first."""
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            yield r, side


def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a process of `tree`: this one's, with the tree alone on PYTHONPATH, so its own
    `bench` and `rv_models` are imported."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def run_in_tree(tree: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`python args...` in a fresh process of `tree` (its cwd, `tree_env`), output captured."""
    return subprocess.run([sys.executable, *args], cwd=tree, env=tree_env(tree), capture_output=True, text=True,
                          timeout=timeout)


def _start(tree: Path, cell: dict, errors: IO[str]) -> subprocess.Popen:
    """The PROBE of `cell` in a fresh process of `tree`, its stderr to `errors`."""
    return subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(cell), str(WARMUP_STEPS)], cwd=tree,
                            env=tree_env(tree), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errors, text=True)


def _reply(process: subprocess.Popen, side: str, errors: IO[str], timeout_s: float) -> str:
    """The probe's next line; CellFailed with its last error line when it ended instead, or when it wrote
    nothing for `timeout_s` (a hung build or step). Only the probe's replies reach the pipe (the tree's own output
    goes to stderr), one line when asked, so nothing is ever left in the pipe's buffer that select could not see."""
    if not select.select([process.stdout], [], [], timeout_s)[0]:
        raise CellFailed(f"no reply in {timeout_s:g} s (a hung build or step)", side)
    line = process.stdout.readline()
    if not line:
        process.wait()
        errors.seek(0)
        last = (errors.read().strip().splitlines() or [f"exit {process.returncode}"])[-1]
        raise CellFailed(last, side)
    return line


def time_pair(trees: dict[str, Path], cell: dict, steps: int, first: int = 0) -> dict[str, list[float]]:
    """`steps` step times (in reference computations) of `cell` on each side, from one fresh process per
    side, alive together and stepped in lockstep (a step of one, then of the other, the side going first
    alternating from `first`), so the machine's state at each moment falls on both alike. CellFailed
    (naming the side) when the cell does not run in a tree or hangs there (`_reply`); both processes are ended
    whatever happens, Ctrl-C included."""
    with tempfile.TemporaryFile("w+") as errors_a, tempfile.TemporaryFile("w+") as errors_b:
        errors = dict(zip(SIDES, (errors_a, errors_b)))
        processes = {side: _start(trees[side], cell, errors[side]) for side in SIDES}
        try:
            for side in SIDES:
                _reply(processes[side], side, errors[side], READY_TIMEOUT_S)  # "ready"
            samples: dict[str, list[float]] = {side: [] for side in SIDES}
            for i in range(steps):
                for side in SIDES if (i + first) % 2 == 0 else SIDES[::-1]:
                    processes[side].stdin.write("\n")
                    processes[side].stdin.flush()
                    samples[side].append(float(_reply(processes[side], side, errors[side], REPLY_TIMEOUT_S)))
            return samples
        finally:
            for process in processes.values():
                process.kill()
                process.wait()


def ab_cell(trees: dict[str, Path], cell: dict, label: str, rounds: int, steps: int) -> CellDelta:
    """`cell` timed in `rounds` pairs of fresh processes of the two sides (trees["a"], trees["b"]), each
    pair in lockstep (`time_pair`); the pooled step times of each side compared by `delta` (B against A;
    its p50s and throughputs are in reference computations, its change, interval and p are the step's)."""
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side, times in time_pair(trees, cell, steps, first=r).items():
            samples[side] += times
    return delta(label, samples["a"], samples["b"], int(cell.get("batch_size", 1)))


def compare_sides(base: list[dict[str, tuple[float, int]]], head: list[dict[str, tuple[float, int]]],
                  base_name: str, head_name: str) -> Comparison:
    """Per benchmark both sides ran: the rounds' medians of each side (name -> (ms, batch) per round)
    compared by `delta`, the benchmarks' p-values adjusted together (`holm`: one gate run calls a false
    verdict with probability at most alpha, however many benchmarks it runs), regressions first."""
    cmp = Comparison(Path(base_name), Path(head_name), DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT,
                     f"BASE {base_name}", f"HEAD {head_name}")
    names_a = set().union(*base) if base else set()
    names_b = set().union(*head) if head else set()
    min_ps: list[float] = []
    for name in sorted(names_a | names_b):
        if name not in names_b:
            cmp.only_a.append(name)
        elif name not in names_a:
            cmp.only_b.append(name)
        else:
            a = [r[name][0] for r in base if name in r]
            b = [r[name][0] for r in head if name in r]
            cmp.cells.append(delta(name, a, b, head[0][name][1]))
            min_ps.append(smallest_p(len(a), len(b)))
    cmp.cells = holm(cmp.cells, min_ps)
    cmp.test = f"Mann-Whitney U on each side's per-process medians, Holm-adjusted over {len(cmp.cells)} benchmarks"
    cmp.cells.sort(key=lambda c: (VERDICTS.index(c.verdict), -abs(c.change_pct)))
    return cmp
