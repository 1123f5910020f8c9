"""A git repository of this project's tree with a known slowdown at a known commit, for bisect and history tests.

`make_repo` copies the tracked (and untracked, not ignored) files of this checkout, never .venv, and commits:
1 the tree; 2 and 3 harmless comments in bench/; 4 a +25% slowdown of rv's ResNet forward; 5 a README-only
change (with `broken_at=5`, also an import error in rv's ResNet, so rv resnet cannot run there); 6 a harmless
comment (undoing the import error when there was one).

The slowdown is calibrated on the forward itself: after computing, the forward does pure-Python work until it
has spent a quarter of the process CPU time the forward just spent (`time.process_time`, read between chunks
of the work), so each forward costs 1.25 times its own compute, on any machine and under any load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SLOWDOWN = 0.25  # the extra process CPU time per forward, as a share of the forward's own
SLOW_COMMIT = 4  # 1-based: the commit that adds it
MODEL = Path("rv_models/resnet.py")
FORWARD = "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        x = self.maxpool("
SLOW_FORWARD = f"""    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        out = self._forward(x)
        _burn({SLOWDOWN} * (time.process_time() - start))
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool("""
# Pure-Python work in chunks of about 50 microseconds, until the process has spent the given CPU time: the burn
# measures itself as it goes, so it costs the same share of the forward under any load (contention from other
# processes inflates the chunks and the forward alike). One clock read per chunk costs about 1% of it.
BURN = """

def _work(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def _burn(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        _work(1_000)
"""
BROKEN_IMPORT = "import rv_models.no_such_module  # noqa: F401  (an import error)\n"


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def _edit(repo: Path, path: str, old: str, new: str) -> None:
    file = repo / path
    text = file.read_text()
    assert old in text, f"{old!r} not in {path}"
    file.write_text(text.replace(old, new, 1))


def _append(repo: Path, path: str, line: str) -> None:
    with open(repo / path, "a") as f:
        f.write(line)


def _commit(repo: Path, message: str) -> str:
    """Commit everything, a day after the repository's last commit (commit N on 2026-01-0N), so that commit order
    and commit time agree to the second."""
    _git(repo, "add", "-A")
    day = len(_git(repo, "rev-list", "--all").split()) + 1
    date = f"2026-01-{day:02d}T12:00:00Z"
    _git(repo, "commit", "-qm", message, env={**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    return _git(repo, "rev-parse", "HEAD")


def make_repo(source: Path, repo: Path, broken_at: int | None = None) -> list[str]:
    """The six commits (see the module's docstring) in a new repository `repo`; their hashes, oldest first."""
    files = subprocess.run(["git", "-C", str(source), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (source / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, repo / name)
    _git(repo, "init", "-q")
    commits = [_commit(repo, "the tree")]
    _append(repo, "bench/errors.py", "# harmless edit 2\n")
    commits.append(_commit(repo, "a comment in bench/errors.py"))
    _append(repo, "bench/columns.py", "# harmless edit 3\n")
    commits.append(_commit(repo, "a comment in bench/columns.py"))
    _edit(repo, str(MODEL), FORWARD, SLOW_FORWARD)
    _edit(repo, str(MODEL), "import torch\n", "import time\n\nimport torch\n")
    _append(repo, str(MODEL), BURN)
    commits.append(_commit(repo, "slow down rv ResNet's forward by 25%"))
    _append(repo, "README.md", "\nA README-only change.\n")
    if broken_at == 5:
        _edit(repo, str(MODEL), "import torch\n", "import torch\n" + BROKEN_IMPORT)
    commits.append(_commit(repo, "README" if broken_at != 5 else "README, and an import error in rv's ResNet"))
    _append(repo, "bench/precisions.py", "# harmless edit 6\n")
    if broken_at == 5:
        _edit(repo, str(MODEL), BROKEN_IMPORT, "")
    commits.append(_commit(repo, "a comment in bench/precisions.py"))
    return commits
