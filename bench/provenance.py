"""Which code is running: the package version and the git state of the checkout it runs from.

Stage 0, so both the env_* columns of every row (bench.measure.env, the Ray driver's commit in
bench.runner.cluster) and `rvbench --version` read the one implementation.
"""

from __future__ import annotations

import subprocess
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
