"""`rvbench bisect`: the first commit between GOOD and BAD where one cell's step got significantly slower.

The commits searched are BAD's first-parent history back to GOOD (`resolve`), as `git bisect
--first-parent` walks it. Each tested commit is checked out in a temporary worktree and its cell timed
against GOOD's in pairs of fresh processes stepped in lockstep (bench.regress.ab.ab_cell). "Regressed"
(p < alpha) with a slowdown beyond `fail_pct` (10% by default: the rule of `make gate-ab`) means bad,
anything else good. A commit where the cell cannot run (an import or build error, the model missing) is
skipped as `git bisect skip` skips it: the nearest untested commit is tried instead, and when only
skipped commits are left between the last good and the first bad one, every one of them is a candidate
(`Bisection.first_bad`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.config.cell import MODES, Cell, config_label, validate
from bench.errors import UsageError
from bench.models import IMPLS, list_archs
from bench.precisions import PRECISIONS
from bench.regress import FAIL_PCT
from bench.regress.ab import CellFailed, ab_cell, git, worktree
from bench.regress.compare import CellDelta

BAD, GOOD, SKIPPED = "bad", "good", "skipped"  # a trial's verdict
DEFAULT_CELL = {"batch_size": 1, "image_size": 224, "precision": "fp32", "mode": "inference"}
_NUMBERED = {r"bs(\d+)": "batch_size", r"(\d+)px": "image_size"}


@dataclass(frozen=True)
class Commit:
    """One commit of the searched history: its full hash and subject line."""

    sha: str
    subject: str


@dataclass(frozen=True)
class Trial:
    """One tested commit: bad, good, or skipped (with the reason), and its measured change against GOOD."""

    commit: Commit
    verdict: str
    delta: CellDelta | None  # None when skipped
    seconds: float
    reason: str = ""

    def record(self) -> dict:
        """The trial as bisect.json writes it."""
        d = self.delta
        return {"commit": self.commit.sha, "subject": self.commit.subject, "verdict": self.verdict,
                "test": d.verdict if d else None, "change_pct": d.change_pct if d else None,
                "p": d.p_value if d else None,
                "speed": d.speed if d else None, "speed_ci": list(d.speed_ci) if d and d.speed_ci else None,
                "seconds": round(self.seconds, 2), "reason": self.reason}


@dataclass
class Bisection:
    """A finished search: what was searched, every trial in order, and the first bad commit(s)."""

    good: Commit
    bad: Commit
    cell: dict
    commits: list[Commit]  # after GOOD, up to and including BAD, oldest first
    trials: list[Trial] = field(default_factory=list)
    first_bad: list[Commit] = field(default_factory=list)  # one when found; several when skips hide it; none

    @property
    def label(self) -> str:
        """The cell's label, as progress lines and tables write it."""
        return config_label(self.cell, sep=" ")

    def trial_of(self, commit: Commit) -> Trial | None:
        """The trial of `commit`, None when it was not tested."""
        return next((t for t in self.trials if t.commit == commit), None)

    def record(self) -> dict:
        """bisect.json: the search's inputs, its answer and every tested commit."""
        return {"good": self.good.sha, "bad": self.bad.sha, "cell": self.cell, "label": self.label,
                "commits": len(self.commits), "first_bad": [c.sha for c in self.first_bad],
                "steps": len(self.trials), "trials": [t.record() for t in self.trials]}


def parse_cell(text: str, device: str = "cpu") -> dict:
    """The one cell a FILTER names, as Cell fields: words as a cell's label writes them, in any order
    ("resnet18 rv bs1 32px fp32 inference"): an arch (or a unique part of one), an impl, bsN, Npx, a
    precision, a mode; batch 1, 224 px, fp32 and inference unless given. UsageError (one line, naming
    what it could match) when a word matches nothing, or the arch or impl is missing or ambiguous."""
    cell: dict = {**DEFAULT_CELL, "device": device}
    archs, impls = list_archs(), list(IMPLS)
    arch_words, impl = [], None
    for word in text.split():
        numbered = [(key, m) for pattern, key in _NUMBERED.items() if (m := re.fullmatch(pattern, word))]
        if numbered:
            cell[numbered[0][0]] = int(numbered[0][1].group(1))
        elif word in PRECISIONS:
            cell["precision"] = word
        elif word in MODES:
            cell["mode"] = word
        elif word in impls:
            impl = word
        elif any(word in arch for arch in archs):
            arch_words.append(word)
        else:
            raise UsageError(f"--cell: {word!r} matches nothing; words: an arch ({', '.join(archs)}), an impl "
                             f"({', '.join(impls)}), bsN, Npx, a precision ({', '.join(PRECISIONS)}), a mode "
                             f"({', '.join(MODES)})")
    matching = [a for a in archs if arch_words and all(w in a for w in arch_words)]
    exact = [a for a in matching if a in arch_words]
    matching = exact or matching
    options = [f"{a} {i}" for a in (matching or archs) for i in ([impl] if impl else impls)]
    if len(matching) != 1 or impl is None:
        raise UsageError(f"--cell {text!r} matches {len(options) if arch_words else 'no arch'}"
                         f"{' configurations' if arch_words else ''}; it could match: {', '.join(options)}")
    cell.update(arch=matching[0], impl=impl)
    validate(Cell(**cell))
    return cell


def _commit(root: Path, rev: str, flag: str) -> Commit:
    sha = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha is None:
        raise UsageError(f"{flag} {rev!r} is not a commit of {root}")
    return Commit(sha, git(root, "log", "-1", "--format=%s", sha) or "")


def resolve(root: Path, good: str, bad: str) -> tuple[Path, Commit, Commit, list[Commit]]:
    """The repository's top folder, GOOD, BAD and the first-parent commits after GOOD up to BAD (oldest
    first); UsageError for a folder outside git, an unknown rev, good == bad, GOOD not an ancestor of BAD."""
    top = git(root, "rev-parse", "--show-toplevel")
    if top is None:
        raise UsageError(f"{root} is not in a git repository; bisect needs the project's history")
    top_path = Path(top)
    good_commit, bad_commit = _commit(top_path, good, "--good"), _commit(top_path, bad, "--bad")
    if good_commit.sha == bad_commit.sha:
        raise UsageError(f"--good and --bad are the same commit {good_commit.sha[:12]}; nothing to search")
    if git(top_path, "merge-base", "--is-ancestor", good_commit.sha, bad_commit.sha) is None:
        raise UsageError(f"--good {good} ({good_commit.sha[:12]}) is not an ancestor of --bad {bad} "
                         f"({bad_commit.sha[:12]})")
    listed = git(top_path, "log", "--first-parent", "--reverse", "--format=%H %s",
                 f"{good_commit.sha}..{bad_commit.sha}") or ""
    commits = [Commit(*line.split(" ", 1)) if " " in line else Commit(line, "") for line in listed.splitlines()]
    if not commits or commits[-1].sha != bad_commit.sha:
        raise UsageError(f"--good {good} is not on --bad {bad}'s first-parent history")
    return top_path, good_commit, bad_commit, commits


def _pick(lo: int, hi: int, skipped: set[int]) -> int | None:
    """The untested index in [lo, hi) nearest their middle (the lower on a tie), None if all are skipped."""
    middle = (lo + hi) // 2
    left = [i for i in range(lo, hi) if i not in skipped]
    return min(left, key=lambda i: (abs(i - middle), i)) if left else None


def bisect(root: Path, good: Commit, bad: Commit, commits: list[Commit], cell: dict, rounds: int, steps: int,
           fail_pct: float = FAIL_PCT, progress: Callable[[Trial], None] = lambda trial: None) -> Bisection:
    """Binary search of `commits` for the first whose cell is significantly slower than GOOD's, every
    worktree removed on return, error or Ctrl-C. UsageError when the cell does not run at GOOD."""
    result = Bisection(good, bad, cell, commits)
    label = config_label(cell, sep=" ")
    with contextlib.ExitStack() as stack:
        good_tree = stack.enter_context(worktree(root, good.sha, prefix="rvbench-bisect-"))

        def test(index: int) -> Trial:
            commit, start = commits[index], time.monotonic()
            try:
                with worktree(root, commit.sha, prefix="rvbench-bisect-") as tree:
                    d = ab_cell({"a": good_tree, "b": tree}, cell, label, rounds, steps)
            except CellFailed as exc:
                if exc.side == "a":
                    raise UsageError(f"the cell {label} does not run at --good {good.sha[:12]}: {exc}") from None
                trial = Trial(commit, SKIPPED, None, time.monotonic() - start, str(exc))
            else:
                slower = d.verdict == "regressed" and d.change_pct > fail_pct
                trial = Trial(commit, BAD if slower else GOOD, d, time.monotonic() - start)
            result.trials.append(trial)
            progress(trial)
            return trial

        lo, hi, skipped = 0, len(commits) - 1, set()  # the first bad commit is in [lo, hi]; hi is bad
        while (index := _pick(lo, hi, skipped)) is not None:
            verdict = test(index).verdict
            if verdict == SKIPPED:
                skipped.add(index)
            elif verdict == BAD:
                hi = index
            else:
                lo = index + 1
        if lo == hi and result.trial_of(commits[hi]) is None and test(hi).verdict != BAD:
            return result  # BAD itself is not slower than GOOD: nothing to find
        result.first_bad = [commits[i] for i in range(lo, hi + 1) if i == hi or i in skipped]
    return result
