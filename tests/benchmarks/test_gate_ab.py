"""The A/B gate's decision on known per-round medians, and its "no base to compare" paths.

The full gate (10 processes of the benchmark suite) runs in CI as `make gate-ab`, after `make
test`; here only what decides and what short-circuits is tested, so `make test` stays quick.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gate_ab
from bench.regress.ab import fresh_sides
from bench.intervals import ci_text
from bench.report.compare_page import comparison_text

ROUNDS = gate_ab.ROUNDS


def _rounds(ms: list[float], name: str = "test_step_time[resnet18-rv-inference]") -> list[dict]:
    return [{name: (value, 2)} for value in ms]


def test_a_significant_slowdown_beyond_the_limit_fails() -> None:
    base = _rounds([10.0 + 0.1 * i for i in range(ROUNDS)])
    head = _rounds([13.0 + 0.1 * i for i in range(ROUNDS)])
    cmp = gate_ab.compare_sides(base, head, "base", "head")
    assert [c.verdict for c in cmp.cells] == ["regressed"] and 28 < cmp.cells[0].change_pct < 31
    assert f"regression of {cmp.cells[0].change_pct:.1f}% exceeds 10%" in cmp.failure(gate_ab.FAIL_PCT)


def test_each_ratio_is_printed_with_an_interval_that_contains_it() -> None:
    base = _rounds([10.0 + 0.1 * i for i in range(ROUNDS)])
    head = _rounds([13.0 + 0.1 * i for i in range(ROUNDS)])
    cmp = gate_ab.compare_sides(base, head, "base", "head")
    (cell,) = cmp.cells
    low, high = cell.speed_ci
    assert low <= cell.speed <= high < 1
    assert f"{cell.speed:.3f}  {ci_text(cell.speed_ci)}" in comparison_text(cmp)


def test_a_significant_slowdown_within_the_limit_passes() -> None:
    base = _rounds([10.0 + 0.01 * i for i in range(ROUNDS)])
    head = _rounds([10.5 + 0.01 * i for i in range(ROUNDS)])
    cmp = gate_ab.compare_sides(base, head, "base", "head")
    assert [c.verdict for c in cmp.cells] == ["regressed"]
    assert cmp.failure(gate_ab.FAIL_PCT) is None


def test_overlapping_rounds_are_unchanged_and_a_speedup_is_an_improvement() -> None:
    noisy = [10.0, 10.4, 9.8, 10.2, 10.1][:ROUNDS]
    base = _rounds(noisy)
    head = _rounds(list(reversed(noisy)))
    assert [c.verdict for c in gate_ab.compare_sides(base, head, "b", "h").cells] == ["unchanged"]
    faster = _rounds([7.0 + 0.1 * i for i in range(ROUNDS)])
    cmp = gate_ab.compare_sides(base, faster, "b", "h")
    assert [c.verdict for c in cmp.cells] == ["improved"] and cmp.failure(gate_ab.FAIL_PCT) is None


def test_the_benchmarks_p_values_are_adjusted_together() -> None:
    """A perfect separation of 6 rounds against 6 (p = 0.0022) is a verdict alone; among 7 benchmarks (Holm: x 7 =
    0.015) 6 rounds can never reach 0.01, so all are underpowered; with 8 against 8 (p = 0.00016, x 7 = 0.0011)
    it is a verdict among 7 as well, and the other 6 stay unchanged."""
    def gate(rounds: int, benchmarks: int) -> list[str]:
        slow = [f"b{i}" for i in range(1, benchmarks)]
        base = [{"a": (10.0 + 0.01 * r, 2), **{n: (10.0 + 0.01 * r, 2) for n in slow}} for r in range(rounds)]
        head = [{"a": (11.0 + 0.01 * r, 2), **{n: (10.0 + 0.01 * ((r + 3) % rounds), 2) for n in slow}}
                for r in range(rounds)]
        cmp = gate_ab.compare_sides(base, head, "b", "h")
        return [c.verdict for c in sorted(cmp.cells, key=lambda c: c.label)]

    assert gate(6, 1) == ["regressed"] and gate(6, 7) == ["underpowered"] * 7
    assert gate(8, 7) == ["regressed"] + ["unchanged"] * 6


def test_too_few_rounds_are_underpowered_and_never_fail() -> None:
    cmp = gate_ab.compare_sides(_rounds([10.0, 10.1]), _rounds([20.0, 20.1]), "b", "h")
    assert [c.verdict for c in cmp.cells] == ["underpowered"]
    assert cmp.failure(gate_ab.FAIL_PCT) is None


def test_benchmarks_only_one_side_ran_are_listed_not_compared() -> None:
    cmp = gate_ab.compare_sides(_rounds([1.0] * ROUNDS, "old"), _rounds([1.0] * ROUNDS, "new"), "b", "h")
    assert cmp.only_a == ["old"] and cmp.only_b == ["new"] and not cmp.cells


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_no_base_to_compare_passes_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A base that is not a commit (a first commit's HEAD~1), and a base without the suite, pass."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README.md").write_text("first commit, no benchmark suite yet\n")
    _git(repo, "add", "README.md")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.chdir(repo)
    assert gate_ab.main(["--out", str(tmp_path / "out")]) == 0
    assert "no base to compare: 'HEAD~1' is not a commit" in capsys.readouterr().out
    assert gate_ab.main(["--base", "HEAD", "--out", str(tmp_path / "out")]) == 0
    assert f"has no {gate_ab.SUITE}; pass" in capsys.readouterr().out
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.splitlines()) == 1, "the temporary worktree must be removed"


def test_both_sides_run_from_fresh_worktrees_made_alike(tmp_path: Path) -> None:
    """HEAD's side is the checkout's working tree (a tracked edit and an untracked file included) in a worktree
    like BASE's: paths of one length, byte-compiled; the checkout itself is left as it was, the trees removed."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pkg" / "mod.py").write_text("VALUE = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (repo / "pkg" / "mod.py").write_text("VALUE = 2\n")  # not committed
    (repo / "pkg" / "new.py").write_text("NEW = 3\n")  # untracked
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
    with fresh_sides(repo, "HEAD", prefix="gate-ab-") as trees:
        assert (trees["a"] / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
        assert (trees["b"] / "pkg" / "mod.py").read_text() == "VALUE = 2\n"
        assert (trees["b"] / "pkg" / "new.py").read_text() == "NEW = 3\n" and not (trees["a"] / "pkg" / "new.py").exists()
        assert len(str(trees["a"])) == len(str(trees["b"])) and repo not in (trees["a"], trees["b"])
        for tree in trees.values():
            assert list((tree / "pkg" / "__pycache__").glob("mod.*.pyc"))
    after = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert after == status and not (repo / "pkg" / "__pycache__").exists()
    assert subprocess.run(["git", "-C", str(repo), "stash", "list"], capture_output=True, text=True).stdout == ""
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.splitlines()) == 1 and not trees["a"].exists() and not trees["b"].exists()


def test_bad_rounds_exit_2(capsys) -> None:
    assert gate_ab.main(["--rounds", "1"]) == 2
    assert "--rounds must be >= 2" in capsys.readouterr().err


def test_the_budgeted_subset_selects_both_families_and_a_train_step(pytestconfig: pytest.Config) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", gate_ab.SUITE,
         "-k", gate_ab.SELECT],
        cwd=pytestconfig.rootpath, capture_output=True, text=True,
    )
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert any("resnet18" in i for i in ids) and any("vit_tiny" in i and "train" in i for i in ids)
    assert not any("resnet50" in i or "vit_small" in i for i in ids)
