"""`rvbench history` on real runs: `rvbench run` at each of six commits of a copy of this project, rv's ResNet made
25% slower at commit 4 (tests/slow_commit_repo.py), read back by `rvbench history` run in that repository.

Each run is a fresh `rvbench run` of the commit's own tree (a temporary worktree): resnet18, rv, 32 px, batch 1,
fp32 inference on one thread, timed in process CPU time (`--process-time`), one run at a time, in RUN_ORDER.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.regress.ab import worktree
from bench.results import load_run
from slow_commit_repo import SLOW_COMMIT, SLOWDOWN, make_repo

# The runs are minutes apart in separate processes: beside the parallel suite a busy sibling core slowed one by
# 35% even in process CPU time, so `make test` runs this module after the others, with the machine to itself.
pytestmark = pytest.mark.alone
RUN = ["-m", "bench", "run", "--preset", "cpu", "--models", "resnet18", "--impls", "rv", "--batch-sizes", "1",
       "--image-size", "32", "--precisions", "fp32", "--modes", "inference", "--rounds", "2", "--process-time"]
# The commits (1-based) in the order their runs are made: not commit order, so the history must sort them, and
# before and after the slowdown in turn, so a change of the machine's load while the test runs (process CPU time
# still feels other processes through the caches they share) lands on both levels rather than making a step.
RUN_ORDER = (4, 1, 5, 2, 6, 3)


def _rvbench(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m bench args...` of `tree`'s own code, on one thread."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict, str, Path]:
    """The commits, history.json, what `rvbench history` printed, and the folder of the runs."""
    repo = tmp_path_factory.mktemp("history-repo")
    commits = make_repo(Path(__file__).resolve().parents[1], repo)
    runs = tmp_path_factory.mktemp("history-runs")

    for i in RUN_ORDER:
        with worktree(repo, commits[i - 1], prefix="rvbench-history-") as tree:
            _rvbench(tree, *RUN, "--out", str(runs / f"commit{i}"))
    page = runs / "history.html"
    printed = _rvbench(repo, "-m", "bench", "history", str(runs), "--out", str(page)).stdout
    return commits, json.loads(page.with_suffix(".json").read_text()), printed, runs


def test_history_finds_the_one_step_at_commit_4_sized_and_blamed_on_the_code(history) -> None:
    commits, data, printed, _ = history
    (series,) = data["series"]
    assert [p["commit"] for p in series["points"]] == commits, "points in commit order, not in the runs' order"
    (step,) = series["steps"]
    assert (step["before"], step["after"]) == (commits[SLOW_COMMIT - 2], commits[SLOW_COMMIT - 1])
    # +25% CPU time per forward is throughput x 1/1.25: -20%, and the step's size is within 8 points of it.
    assert step["change_pct"] == pytest.approx(100 * (1 / (1 + SLOWDOWN) - 1), abs=8)
    assert step["why"] == "code" and step["p_value"] < data["alpha"]
    assert series["trend"] == "regressed" and "--process-time" in series["command"]
    assert commits[SLOW_COMMIT - 1][:10] in printed


def test_a_process_time_run_says_its_clock_and_is_not_crosschecked_against_wall_time(history, capsys) -> None:
    *_, runs = history
    (run,) = (runs / "commit1" / "runs").iterdir()
    rows = load_run(run)
    assert set(rows["timer"]) == {"process-cpu"}
    assert re.search(r"Clock</dt>\s*<dd>process-cpu", (run / "index.html").read_text())
    assert main(["crosscheck", str(run)]) == 2
    err = capsys.readouterr().err
    assert "timed its steps in process CPU time" in err and len(err.strip().splitlines()) == 1
    assert not (run / "crosscheck.csv").exists()
