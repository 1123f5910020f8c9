"""`rvbench compare`: matching, significance + effect verdicts, each ratio's interval, unmatched cells, exit codes,
HTML."""

from __future__ import annotations

import json
import re

import pytest
from report_fixture import make_old, write_run

from bench.cli import main
from bench.intervals import ci_text
from bench.regress.compare import compare_runs, smallest_p
from bench.report.compare_page import comparison_text, write_html

SMALL = {"archs": ("resnet50",), "batches": (8, 64), "precisions": ("fp32",), "rounds": 2, "failures": {}}
SLOW_KEY = ("resnet50", "timm", 8, "fp32")
SLOW_LABEL = "resnet50 · timm · bs8 · 224px · fp32 · inference"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A, an independent repeat of it (other noise), and B with timm at batch 8 20% slower."""
    base = tmp_path_factory.mktemp("compare")
    a = write_run(base / "a", seed=0, **SMALL)
    repeat = write_run(base / "repeat", seed=1, **SMALL)
    slow = write_run(base / "slow", seed=2, slow={SLOW_KEY: 1.2}, **SMALL)
    return a, repeat, slow


def test_planted_slowdown_is_the_only_regression(runs):
    a, _, slow = runs
    cmp = compare_runs(a, slow)
    verdicts = {c.label: c.verdict for c in cmp.cells}
    assert verdicts.pop(SLOW_LABEL) == "regressed"
    assert set(verdicts.values()) == {"unchanged"}
    worst = cmp.cells[0]
    assert worst.label == SLOW_LABEL
    assert worst.change_pct == pytest.approx(20.0, abs=1.0)
    assert worst.throughput_b / worst.throughput_a == pytest.approx(1 / 1.2, rel=0.01)
    assert worst.p_value < 1e-6
    assert cmp.only_a == [] and cmp.only_b == [] and cmp.broken == []


def test_reversed_runs_show_an_improvement(runs):
    a, _, slow = runs
    cmp = compare_runs(slow, a)
    assert [c.label for c in cmp.cells if c.verdict == "improved"] == [SLOW_LABEL]
    assert cmp.counts()["regressed"] == 0


def test_identical_and_repeated_runs_are_unchanged(runs):
    a, repeat, _ = runs
    for other in (a, repeat):
        cmp = compare_runs(a, other)
        assert len(cmp.cells) == 3 * 2 + 3 + 3 * 2  # inference impls x batches, compiled, train/finetune
        assert {c.verdict for c in cmp.cells} == {"unchanged"}


def test_effect_threshold_gates_a_significant_change(runs):
    a, _, slow = runs
    cmp = compare_runs(a, slow, threshold_pct=25.0)
    assert {c.verdict for c in cmp.cells} == {"unchanged"}


def test_unmatched_and_failed_cells_are_listed(tmp_path):
    a = write_run(tmp_path / "a", **SMALL)
    b = write_run(
        tmp_path / "b", **{**SMALL, "batches": (8, 32), "failures": {("resnet50", "rv", 8, "fp32"): ("oom", "CUDA OOM")}}
    )
    cmp = compare_runs(a, b)
    assert any("bs64" in label for label in cmp.only_a)
    assert any("bs32" in label for label in cmp.only_b)
    assert cmp.broken == [("resnet50 · rv · bs8 · 224px · fp32 · inference", "ok", "oom")]
    assert cmp.failure(max_regression_pct=50.0) == "a cell that measured in A fails in B"


@pytest.mark.parametrize(("pair", "pct", "code"), [("slow", 10, 1), ("slow", 25, 0), ("same", 0, 0)])
def test_cli_exit_codes_and_outputs(runs, tmp_path, capsys, pair, pct, code):
    a, _, slow = runs
    b = slow if pair == "slow" else a
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(b), "--out", str(out), "--fail-on-regression", str(pct)]) == code
    printed = capsys.readouterr().out
    assert "cells compared" in printed and str(out) in printed
    html = out.read_text()
    assert not re.search(r"https?://|<script|<link", html)
    if pair == "slow":
        assert re.search(rf"{re.escape(SLOW_LABEL)}.*regressed", printed)
        assert 'class="status-regressed verdict-regressed">regressed<' in html
    else:
        assert "0 regressed, 0 improved" in printed


def test_cli_bad_input(runs, tmp_path, capsys):
    a, _, _ = runs
    assert main(["compare", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), "--alpha", "1.5", "--out", str(tmp_path / "x.html")]) == 2
    assert "--alpha" in capsys.readouterr().err


def test_runs_timed_by_different_clocks_do_not_compare(runs, tmp_path, capsys):
    """Rows whose timer says process-cpu against a run made before the column (the fixture's runs are on a GPU:
    CUDA events): exit 2 with one line, nothing written; two runs from before the column compare."""
    a, repeat, _ = runs
    cpu_timed = tmp_path / "cpu-timed"
    write_run(cpu_timed, seed=1, **SMALL)
    rows = [json.loads(line) for line in (cpu_timed / "results.jsonl").read_text().splitlines()]
    (cpu_timed / "results.jsonl").write_text("".join(json.dumps({**r, "timer": "process-cpu"}) + "\n" for r in rows))
    out = tmp_path / "x.html"
    assert main(["compare", str(a), str(cpu_timed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "timed its steps in cuda-events time" in err and "in process-cpu time" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert compare_runs(a, repeat).cells


def test_tiny_samples_are_underpowered_not_unchanged(tmp_path):
    tiny = {**SMALL, "rounds": 1, "n_samples": 3}
    a = write_run(tmp_path / "a", seed=0, **tiny)
    slow = write_run(tmp_path / "slow", seed=2, slow={SLOW_KEY: 1.5}, **tiny)
    cmp = compare_runs(a, slow)
    assert smallest_p(3, 3) == pytest.approx(0.1)
    assert {c.verdict for c in cmp.cells} == {"underpowered"}, "3 vs 3 samples can never give p < 0.01"
    assert cmp.counts()["underpowered"] == len(cmp.cells) > 0
    slowed = next(c for c in cmp.cells if c.label == SLOW_LABEL)
    assert slowed.change_pct == pytest.approx(50.0, abs=3.0)
    # With a loose enough alpha the same samples can be tested, and the planted slowdown shows.
    loose = compare_runs(a, slow, alpha=0.2)
    assert {c.label for c in loose.cells if c.verdict == "regressed"} == {SLOW_LABEL}
    assert "underpowered" not in {c.verdict for c in loose.cells}


def test_cli_shows_underpowered_cells(tmp_path, capsys):
    tiny = {**SMALL, "rounds": 1, "n_samples": 3}
    a = write_run(tmp_path / "a", seed=0, **tiny)
    slow = write_run(tmp_path / "slow", seed=2, slow={SLOW_KEY: 1.5}, **tiny)
    out = tmp_path / "cmp.html"
    assert main(["compare", str(a), str(slow), "--out", str(out), "--fail-on-regression", "10"]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"{re.escape(SLOW_LABEL)}.*underpowered", printed)
    assert "0 regressed, 0 improved, 0 unchanged, 15 underpowered" in printed
    assert "too few samples" in printed
    html = out.read_text()
    assert html.count('class="status-underpowered verdict-underpowered">underpowered<') == 15
    assert "15 underpowered" in html


def test_fail_on_regression_trips_when_nothing_was_compared(tmp_path, capsys):
    a = write_run(tmp_path / "a", **SMALL)
    b = write_run(tmp_path / "b", **{**SMALL, "archs": ("vit_base_patch16_224",)})
    cmp = compare_runs(a, b)
    assert cmp.cells == [] and cmp.only_a and cmp.only_b
    args = ["compare", str(a), str(b), "--out", str(tmp_path / "cmp.html")]
    assert main(args) == 0, "without --fail-on-regression an empty comparison is just reported"
    capsys.readouterr()
    assert main([*args, "--fail-on-regression", "50"]) == 1
    assert "no configuration was measured in both runs: nothing could be compared: exit 1" in capsys.readouterr().out


def test_every_ratio_has_an_interval_that_contains_it(runs, tmp_path):
    a, repeat, slow = runs
    cmp = compare_runs(a, slow)
    for cell in cmp.cells:
        low, high = cell.speed_ci
        assert low <= cell.speed <= high, cell.label
    worst = cmp.cells[0]
    assert worst.label == SLOW_LABEL and worst.speed_ci[1] < 0.9, "a 20% slowdown: the interval excludes 1"
    assert all(c.speed_ci[0] < 1 < c.speed_ci[1] for c in compare_runs(a, repeat).cells), "same speed: it holds 1"
    assert compare_runs(a, slow).cells[0].speed_ci == worst.speed_ci, "seeded"
    text = comparison_text(cmp)
    assert "95% CI" in text.splitlines()[0]
    assert re.search(rf"{re.escape(SLOW_LABEL)}.* {worst.speed:.3f}  {re.escape(ci_text(worst.speed_ci))} ", text)
    html = write_html(cmp, tmp_path / "cmp.html").read_text()
    assert "<th class=\"num\">95% CI</th>" in html and f'<td class="num">{ci_text(worst.speed_ci)}</td>' in html


def test_a_run_made_before_intervals_still_compares(tmp_path):
    """Rows without the interval columns compare as before: the intervals come from the raw samples."""
    old = make_old(write_run(tmp_path / "old", seed=0, **SMALL))
    new = write_run(tmp_path / "new", seed=2, slow={SLOW_KEY: 1.2}, **SMALL)
    cmp = compare_runs(old, new)
    assert {c.label for c in cmp.cells if c.verdict == "regressed"} == {SLOW_LABEL}
    assert all(c.speed_ci[0] <= c.speed <= c.speed_ci[1] for c in cmp.cells)
