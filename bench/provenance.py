"""Which code is running: the package version and the git state of the checkout it runs from.

Stage 0, so both the env_* columns of every row (bench.measure.env, the Ray driver's commit in
bench.runner.cluster) and `rvbench --version` read the one implementation; `rvbench history` asks the
same checkout when each recorded commit was made (`commit_times`).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from; (None, None) if it is not one.

    Dirty means tracked files differ from the commit; untracked files (run outputs) do not count.
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != REPO_ROOT:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return _git("rev-parse", "HEAD"), None if status is None else status != ""


_COMMIT = re.compile(r"[0-9a-f]{7,40}")


def commit_times(commits: Iterable[str]) -> dict[str, int]:
    """When each of `commits` (as the env_git_commit columns hold them) was committed, as a Unix time,
    asked of this checkout's repository in one `git log`; a commit it does not have (another clone's,
    a rebased one), a value that is no commit hash, or no repository at all is left out.

    Only hexadecimal hashes reach git: the values come from result files, never from a trusted hand.
    """
    wanted = sorted({c for c in commits if isinstance(c, str) and _COMMIT.fullmatch(c)})
    if not wanted:
        return {}
    out = _git("log", "--no-walk", "--ignore-missing", "--format=%H %ct", *wanted)
    known = dict(line.split() for line in (out or "").splitlines() if line.count(" ") == 1)
    return {c: int(t) for c in wanted for full, t in known.items() if full.startswith(c)}
