"""`rvbench history`: runs read where they lie, series in commit order, steps found, sized, explained and drawn.

Every run here is synthetic: rows made by make_row, written by the store's ResultWriter and finalize, each
cell's samples drawn from a seeded log-normal whose median is the step time planted for that run, so
each test knows the truth its steps must find.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import build_parser, main
from bench.config.cell import Cell
from bench.errors import ExitCode
from bench.intervals import median_ci
from bench.provenance import commit_times, git_state
from bench.regress import history as history_module
from bench.regress.changepoints import ENVIRONMENT
from bench.regress.history import load_history, read_rows
from bench.results import ResultWriter, finalize
from bench.results.rows import make_row

BATCH = 8
BASE_MS = 20.0  # step time of the first runs: 400 img/s at batch 8
DAY = 86_400.0
START = 1_700_000_000.0  # the first run's time stamp; each later run a day later
ENV = {"env_torch": "2.5.0", "env_torchvision": "0.20.0", "env_timm": "1.0.11", "env_cpu": "Test CPU",
       "env_threads": 4, "env_host": "box", "env_python": "3.12.3", "env_git_dirty": False}
# Columns today's rows carry and an older rvbench did not write.
NEWER = ("step_ms_p50_ci_low", "step_ms_p50_ci_high", "rel_ci", "converged", "throughput_ci_low",
         "throughput_ci_high", "others_cpu", "load_avg", "gpu_other_procs", "contended", "optimizer")


def _commit(index: int) -> str:
    """A made-up commit hash per run index (this checkout knows none: runs fall back to their own time)."""
    return hashlib.sha1(str(index).encode()).hexdigest()


def _write_run(run_dir: Path, *, index: int, step_ms: dict[str, float], spread: float, seed: int,
               commit: str | None = None, env: dict | None = None, rounds: int = 2, n: int = 40,
               form: str = "new") -> Path:
    """One synthetic `rvbench run` on a CPU: per impl in `step_ms`, resnet18 at batch BATCH, `rounds` rounds of
    `n` samples from a log-normal with median step_ms[impl] and log spread `spread`.

    `form`: "new" (finalized, today's columns), "old" (its parquet without the NEWER columns, as an older
    rvbench wrote it) or "jsonl" (never finalized: no parquet, as without pyarrow).
    """
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    writer = ResultWriter(run_dir)
    env = {**ENV, "env_git_commit": commit or _commit(index), **(env or {})}
    for rnd in range(rounds):
        for impl, ms in step_ms.items():
            cell = Cell("resnet18", impl, BATCH, 112, round=rnd)
            samples = (ms * np.exp(rng.normal(0.0, spread, n))).tolist()
            p50 = float(np.median(samples))
            low, high = median_ci(np.asarray(samples))  # as bench.measure.timing computes it
            row = make_row(run_dir.name, cell.cell_id, cell, "ok", started=START + index * DAY, env=env,
                           find_max_batch=False, n_iters=n, step_ms_p50=p50, step_ms_p50_ci_low=low,
                           step_ms_p50_ci_high=high, converged=True, throughput=BATCH * 1000 / p50,
                           others_cpu=0.0, contended=False)
            writer.write(row, samples)
    writer.close()
    if form != "jsonl":
        df = finalize(run_dir)
        if form == "old":
            df.drop(columns=list(NEWER)).to_parquet(run_dir / "results.parquet", index=False)
    return run_dir


def _series_runs(root: Path, step_ms: list[dict[str, float]], spread: float, seed: int = 0, **kw) -> Path:
    for i, ms in enumerate(step_ms):
        _write_run(root / f"run{i + 1}", index=i, step_ms=ms, spread=spread, seed=seed * 100 + i, **kw)
    return root


def _only(history, impl: str = "rv"):
    (series,) = [s for s in history.series if s.config["impl"] == impl]
    return series


def test_a_20pct_step_at_run_4_is_found_once_sized_and_blamed_on_the_code(tmp_path: Path) -> None:
    """Six quiet runs (1.5% spread), rv 20% slower from run 4 on, timm unchanged, a new commit every run."""
    runs = [{"rv": BASE_MS * (1.25 if i >= 3 else 1.0), "timm": 15.0} for i in range(6)]
    history = load_history([_series_runs(tmp_path / "runs", runs, spread=0.015)])
    rv = _only(history)
    assert [Path(p.run).name for p in rv.points] == [f"run{i}" for i in range(1, 7)]
    assert not _only(history, "timm").steps
    (step,) = rv.steps
    assert (Path(step.before.run).name, Path(step.after.run).name) == ("run3", "run4")
    assert step.change_pct == pytest.approx(-20.0, abs=8.0) and step.p_value < history.alpha
    assert step.why == "code" and step.changed == ()
    assert step.before.commit != step.after.commit
    assert rv.trend == "regressed" and _only(history, "timm").trend == "flat"
    assert history.steps() == [(rv, step)]


def test_a_noisy_series_without_a_step_has_none(tmp_path: Path) -> None:
    """10% spread within every run, the same median throughout: no step, the series flat."""
    history = load_history([_series_runs(tmp_path / "runs", [{"rv": BASE_MS}] * 6, spread=0.10, seed=1)])
    assert _only(history).steps == [] and _only(history).trend == "flat"


def test_a_machine_that_wanders_between_quiet_runs_makes_no_step(tmp_path: Path) -> None:
    """1% spread within each run, but each run ±6-8% off the last (a shared VM's speed between runs): the
    run-to-run spread sets the penalty, so no step, where within-run noise alone would call several."""
    wander = (1.0, 1.07, 0.99, 1.08, 1.0, 0.93)
    runs = [{"rv": BASE_MS * w} for w in wander]
    assert _only(load_history([_series_runs(tmp_path / "runs", runs, spread=0.01, seed=3)])).steps == []


def test_a_quiet_series_reports_a_3pct_step(tmp_path: Path) -> None:
    runs = [{"rv": BASE_MS * (1 / 0.97 if i >= 3 else 1.0)} for i in range(6)]
    (step,) = _only(load_history([_series_runs(tmp_path / "runs", runs, spread=0.01, seed=2)])).steps
    assert Path(step.after.run).name == "run4" and step.change_pct == pytest.approx(-3.0, abs=1.0)


def test_a_step_where_torch_changed_and_the_code_did_not_is_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for i in range(6):
        _write_run(root / f"run{i + 1}", index=i, step_ms={"rv": BASE_MS * (1.25 if i >= 3 else 1.0)}, spread=0.015,
                   seed=30 + i, commit="ab" * 20, env={"env_torch": "2.6.0"} if i >= 3 else None)
    (step,) = _only(load_history([root])).steps
    assert Path(step.after.run).name == "run4"
    assert (step.why, step.changed) == ("environment", ("env_torch",))


def test_runs_of_older_versions_and_without_parquet_load(tmp_path: Path) -> None:
    """An old run (a parquet without today's newer columns) and a jsonl-only run join today's in one series."""
    root = tmp_path / "runs"
    for i, form in enumerate(("old", "jsonl", "new")):
        _write_run(root / f"run{i + 1}", index=i, step_ms={"rv": BASE_MS}, spread=0.015, seed=40 + i, form=form)
    assert not (root / "run2" / "results.parquet").exists()
    assert "others_cpu" not in pd.read_parquet(root / "run1" / "results.parquet").columns
    rows = read_rows(sorted(root.iterdir()))
    assert len(rows) == 6 and rows.loc[rows["run"].str.endswith("run1"), "step_ms_p50_ci_low"].isna().all()
    assert set(rows["optimizer"]) == {"default"}  # filled for rows from before the optimizer was a field
    series = _only(load_history([root]))
    assert [Path(p.run).name for p in series.points] == ["run1", "run2", "run3"]
    # The old run's noise comes from its samples, as the measurement would have computed its interval.
    assert all(0 < p.log_var < 1e-3 for p in series.points) and series.steps == []


def test_a_damaged_parquet_file_is_read_from_its_jsonl(tmp_path: Path) -> None:
    root = _series_runs(tmp_path / "runs", [{"rv": BASE_MS}] * 3, spread=0.015, seed=4)
    (root / "run2" / "results.parquet").write_bytes(b"PAR1 not really")
    with pytest.warns(UserWarning, match="results.parquet unreadable"):
        rows = read_rows(sorted(root.iterdir()))
    assert rows.groupby("run").size().to_dict() == {str(root / f"run{i}"): 2 for i in (1, 2, 3)}


def test_runs_follow_their_commits_time_when_git_knows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run1 was made last but measures the oldest commit: it comes first."""
    root = _series_runs(tmp_path / "runs", [{"rv": BASE_MS}] * 3, spread=0.015, seed=5)
    commits = {_commit(i): t for i, t in ((0, 100), (1, 200), (2, 300))}
    monkeypatch.setattr(history_module, "commit_times", lambda wanted: {c: commits[c] for c in wanted})
    (root / "run1").rename(root / "run9")
    order = [Path(p.run).name for p in _only(load_history([root])).points]
    assert order == ["run9", "run2", "run3"]


def test_the_run_command_measures_the_series_configuration(tmp_path: Path) -> None:
    """The newest run's preset (its timing and rounds) and every configuration field, as `rvbench run` parses them."""
    root = _series_runs(tmp_path / "runs", [{"rv": BASE_MS}] * 2, spread=0.015)
    (root / "run2" / "config.json").write_text(json.dumps({"preset": "cpu"}))
    series = _only(load_history([root]))
    words = shlex.split(series.command)
    assert words[:2] == ["rvbench", "run"]
    args = build_parser("run").parse_args(words[1:])
    cell = Cell("resnet18", "rv", BATCH, 112)
    assert (args.preset, args.models, args.impls, args.batch_sizes, args.image_size, args.precisions, args.compile, args.modes,
            args.channels_last, args.device) == (
        "cpu", [cell.arch], [cell.impl], [cell.batch_size], cell.image_size, [cell.precision], [cell.compile], [cell.mode],
        cell.channels_last, "cpu")


def test_history_prints_the_steps_and_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = [{"rv": BASE_MS * (1.25 if i >= 3 else 1.0), "timm": 15.0} for i in range(5)]
    root = _series_runs(tmp_path / "reports" / "runs", runs, spread=0.015, seed=7)
    (root / "run4" / "index.html").write_text("<html></html>")
    assert main(["history", str(root)]) == ExitCode.OK
    out = capsys.readouterr().out
    page = tmp_path / "reports" / "history.html"  # next to the root
    assert f"wrote {page}" in out and re.search(rf"run3 +{_commit(2)[:10]} +run4 +{_commit(3)[:10]} +code +-2\d\.\d%", out)
    html = page.read_text()
    assert re.findall(r'data-plot="([^"]+)"', html) == ["history-resnet18-rv", "history-resnet18-timm"]
    assert 'id="steps"' in html and html.count("<tr class=\"step") == 1
    assert 'href="runs/run4/index.html"' in html and "rvbench run --preset" not in html  # no config.json here
    assert "rvbench run --models resnet18 --impls rv" in html
    assert "src=\"http" not in html and "<script src" not in html  # self-contained


@pytest.mark.parametrize("case", ["empty", "missing", "no-deps"])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    root = tmp_path / "runs"
    if case != "missing":
        root.mkdir()
    if case == "no-deps":
        _write_run(root / "run1", index=0, step_ms={"rv": BASE_MS}, spread=0.01, seed=0)
        monkeypatch.setitem(sys.modules, "ruptures", None)
        monkeypatch.delitem(sys.modules, "bench.regress.history")
        monkeypatch.delitem(sys.modules, "bench.regress.changepoints")
    assert main(["history", str(root), "--out", str(tmp_path / "h.html")]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("rvbench history: error: ")
    assert {"empty": "no run directories", "missing": "is not a directory",
            "no-deps": "pip install 'rvbench[history]'"}[case] in err
    assert not (tmp_path / "h.html").exists()


def test_environment_fields_are_declared_columns() -> None:
    from bench.columns import names

    assert set(ENVIRONMENT) <= set(names("environment"))



def test_commit_times_asks_this_checkout_and_passes_git_nothing_but_hashes() -> None:
    commit, _ = git_state()
    if commit is None:
        pytest.skip("not a git checkout: no commit to ask about")
    times = commit_times([commit, commit[:10], "--all", "f" * 40, None])
    assert set(times) == {commit, commit[:10]} and times[commit] == times[commit[:10]] > 1e9
