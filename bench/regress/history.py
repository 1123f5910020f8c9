"""`rvbench history`: every run under some folders, as one series per configuration and machine, with its steps.

Runs are read where they lie, with no import step and no server: the results.parquet files of all of
them in one DuckDB query (`read_parquet([...], union_by_name=true, filename=true)`), which reads only the
columns used here and gives NULL for a column a run made by an older rvbench lacks; a run without a
current parquet file (made without pyarrow, or resumed after it was written: bench.results.current_parquet)
is read from its results.jsonl by bench.results.load, which also handles a damaged parquet file.
Only ok rows of `rvbench run` sweeps count (bench.results.ok_rows: no max-batch searches; no scale or
transfer rows).

A series is one configuration (bench.config.cell.config_keys, with impl) on one machine class (the GPU's
name, or the CPU's and its thread count for CPU runs). Runs are ordered by the time of their commit
(asked of this checkout's git repository, bench.provenance.commit_times), else by when they ran (their
first started_at, or env_timestamp), then by when they ran. Each run gives a series its median
throughput over rounds (bench.results.analysis.config_medians) with that median's interval, which
sets the noise the step detection allows for (bench.regress.changepoints).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from bench.columns import SWEEP_MODES
from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import config_keys, config_label
from bench.errors import UsageError
from bench.intervals import median_ci
from bench.provenance import commit_times
from bench.regress import DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT
from bench.regress.changepoints import ENVIRONMENT, Point, Step, log_variance, steps
from bench.results import current_parquet, is_run_dir, load, load_samples, ok_rows, with_cell_defaults
from bench.results.analysis import INTERVALS, config_medians

SERIES_KEYS = config_keys(impl=True)  # a configuration and its implementation
_KEYS = config_keys(impl=True, device=True)  # what config_medians groups a run's rows by
_CI = INTERVALS["step_ms_p50"]
# The columns read from every run; a run that lacks one reads NULL.
READ = tuple(dict.fromkeys((*_KEYS, "round", "cell_id", "status", "find_max_batch", "throughput", "step_ms_p50",
                            *_CI, "converged", "contended", "timer", "started_at", "env_timestamp", "env_git_commit",
                            "env_git_dirty", *ENVIRONMENT)))
TRENDS = ("regressed", "improved", "flat")


@dataclass
class Series:
    """One configuration on one machine class, a point per run in commit order, and its confirmed steps."""

    config: dict  # SERIES_KEYS -> value
    machine: str
    command: str  # the `rvbench run` command that measures this configuration (`run_command`)
    points: list[Point]
    steps: list[Step] = field(default_factory=list)
    threshold_pct: float = DEFAULT_THRESHOLD_PCT

    @property
    def label(self) -> str:
        """The configuration (all its fields) and the machine class."""
        return f"{config_label(self.config)} · {self.machine}"

    @property
    def change_pct(self) -> float:
        """Throughput of the last level over the first (the median run of each, levels split at the steps), -1, in %;
        0 without a step."""
        if not self.steps:
            return 0.0
        first = [p.throughput for p in self.points if p.position < self.steps[0].after.position]
        last = [p.throughput for p in self.points if p.position >= self.steps[-1].after.position]
        return (statistics.median(last) / statistics.median(first) - 1) * 100

    @property
    def trend(self) -> str:
        """One of TRENDS since the first run: flat unless the steps add up to at least the threshold."""
        if abs(self.change_pct) < self.threshold_pct:
            return "flat"
        return "regressed" if self.change_pct < 0 else "improved"


@dataclass
class History:
    """Everything `rvbench history` prints and draws (bench.report.history_page)."""

    roots: list[Path]
    runs: list[str]  # every run read, in commit order (a Point's `position` indexes it)
    series: list[Series]
    alpha: float
    threshold_pct: float

    def steps(self) -> list[tuple[Series, Step]]:
        """Every confirmed step, the largest regression first, improvements last (the largest first)."""
        found = [(s, step) for s in self.series for step in s.steps]
        return sorted(found, key=lambda item: (not item[1].regressed, -abs(item[1].change_pct)))

    def record(self) -> dict:
        """history.json: per series its configuration, machine class, command, trend, points and steps, each step
        with its two runs and commits, size, interval, p and why: what a dashboard or a CI job reads."""
        def step(st: Step) -> dict:
            return {"before_run": st.before.run, "after_run": st.after.run, "before": st.before.commit,
                    "after": st.after.commit, "change_pct": st.change_pct, "p_value": st.p_value,
                    "speed_ci": st.speed_ci, "why": st.why, "changed": list(st.changed)}

        return {"roots": [str(r) for r in self.roots], "runs": self.runs, "alpha": self.alpha,
                "threshold_pct": self.threshold_pct,
                "series": [{"config": s.config, "machine": s.machine, "command": s.command, "trend": s.trend,
                            "change_pct": s.change_pct,
                            "points": [{"run": p.run, "commit": p.commit, "throughput": p.throughput} for p in s.points],
                            "steps": [step(st) for st in s.steps]} for s in self.series]}


def find_runs(roots: Sequence[Path]) -> list[Path]:
    """Every run directory at or under `roots`, each once (reports/latest links to one of reports/runs/);
    UsageError for a root that is not a directory."""
    found: dict[Path, Path] = {}
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"{root} is not a directory; give folders of run directories such as reports/runs")
        for folder, subfolders, _ in os.walk(root):  # links below the root are not followed
            if is_run_dir(Path(folder)):
                found.setdefault(Path(folder).resolve(), Path(folder))
                subfolders.clear()  # a run's own folders (profiles/) hold no runs
    return sorted(found.values())


def _select(present: set[str]) -> str:
    return ", ".join(f'"{c}"' if c in present else f'NULL AS "{c}"' for c in READ)


def _parquet_rows(files: dict[str, Path]) -> tuple[pd.DataFrame, list[Path]]:
    """The READ columns of every row of `files` (parquet path -> run), in one DuckDB query, with a `run`
    column; and the runs whose file DuckDB cannot read (a damaged one), for bench.results.load, which says so."""
    files, con = dict(files), duckdb.connect()
    query = "SELECT * FROM read_parquet($files, union_by_name=true, filename=true)"
    bad = []
    for path in list(files):
        try:
            con.execute(f"DESCRIBE {query}", {"files": [path]})
        except duckdb.Error:
            bad.append(files.pop(path))
    if not files:
        return pd.DataFrame(columns=[*READ, "run"]), bad
    present = {row[0] for row in con.execute(f"DESCRIBE {query}", {"files": list(files)}).fetchall()}
    df = con.execute(f"SELECT {_select(present)}, filename FROM ({query})", {"files": list(files)}).df()
    return df.assign(run=df.pop("filename").map(lambda f: str(files[f]))), bad


def read_rows(runs: Sequence[Path]) -> pd.DataFrame:
    """The READ columns of every sweep row of `runs`, with the run directory in `run` (as given)."""
    files = {str(p): run for run in runs if (p := current_parquet(run)) is not None}
    parquet, bad = _parquet_rows(files)
    rest = [load(run).reindex(columns=list(READ)).assign(run=str(run)) for run in runs
            if current_parquet(run) is None or run in bad]
    df = with_cell_defaults(pd.concat([parquet, *rest], ignore_index=True))
    return df[df["mode"].isin(SWEEP_MODES)].reset_index(drop=True)


PROCESS_CPU = " · process CPU time"  # a machine class timed by --process-time (its rows' timer)


def _machines(df: pd.DataFrame) -> pd.Series:
    """Each row's machine class: its GPU's name, or its CPU and thread count, and PROCESS_CPU when its steps were
    timed in process CPU time (a different clock is a different series; a run without `timer` timed wall time)."""
    threads = pd.to_numeric(df["env_threads"], errors="coerce").astype("Int64").astype(str)
    noun = pd.Series(np.where(threads == "1", " thread", " threads"), index=df.index)
    cpu = df["env_cpu"].fillna("unknown CPU").astype(str) + (" × " + threads + noun).where(df["env_threads"].notna(), "")
    machine = df["env_gpu_name"].where(df["env_gpu_name"].notna(), cpu).astype(str)
    return machine + np.where(df["timer"] == "process-cpu", PROCESS_CPU, "")


class RunSamples(dict):
    """Each run's raw step times by cell id (bench.results.load_samples), keyed by run directory, read when first
    asked for: only runs whose rows lack intervals, and the runs around a candidate step, need them."""

    def __missing__(self, run: str) -> dict[str, list[float]]:
        self[run] = load_samples(run)
        return self[run]


def order_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (index: run), sorted in commit order, with its commit, dirty flag and `position`."""
    when = pd.to_datetime(df["started_at"].fillna(df["env_timestamp"]), utc=True, errors="coerce", format="ISO8601")
    ran = (when - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)  # Unix seconds, nan when unknown
    runs = df.assign(ran=ran).groupby("run").agg(commit=("env_git_commit", "first"), dirty=("env_git_dirty", "first"),
                                                 ran=("ran", "min"))
    committed = commit_times(runs["commit"].dropna())
    runs["key"] = [committed.get(c, r) for c, r in zip(runs["commit"], runs["ran"])]
    runs = runs.reset_index().sort_values(["key", "ran", "run"], na_position="last", kind="stable")
    return runs.assign(position=range(len(runs))).set_index("run")


def _with_intervals(rows: pd.DataFrame, samples: RunSamples) -> pd.DataFrame:
    """A run's `rows` with each one's median interval filled from its raw samples where the row has none (a run
    made before rows carried one), as the measurement computes it (bench.intervals.median_ci)."""
    rows = rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") for c in _CI})
    missing = rows[_CI[0]].isna()
    if missing.any():
        own = samples[rows["run"].iloc[0]]
        cis = {i: median_ci(np.asarray(own[c], dtype=np.float64)) if c in own else None
               for i, c in rows.loc[missing, "cell_id"].items()}
        filled = {i: ci for i, ci in cis.items() if ci is not None}
        for column, end in zip(_CI, (0, 1)):
            rows.loc[list(filled), column] = [ci[end] for ci in filled.values()]
    return rows


def _preset(run: str) -> str | None:
    """The preset a run's config.json names (its timing and rounds), None when it names none or cannot be read."""
    try:
        preset = json.loads((Path(run) / "config.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None
    return preset if isinstance(preset, str) else None


def run_command(config: Mapping[str, object], device: str, preset: str | None, process_time: bool = False) -> str:
    """The `rvbench run` command that measures one configuration (its flags as bench/commands/run.py declares
    them), on `device`'s kind, with the run's preset for its timing and rounds, in process CPU time if the
    series was."""
    words = ["rvbench", "run", *(["--preset", preset] if preset else []),
             "--models", config["arch"], "--impls", config["impl"], "--batch-sizes", int(config["batch_size"]),
             "--image-size", int(config["image_size"]), "--precisions", config["precision"],
             "--compile", config["compile"], "--modes", config["mode"]]
    if config["mode"] != "inference":
        words += ["--optimizer", config["optimizer"]]
    if config.get("backend", DEFAULT_BACKEND) != DEFAULT_BACKEND:
        words += ["--backends", config["backend"]]
    words += ["--channels-last" if config["channels_last"] else "--no-channels-last",
              "--device", "cpu" if device == "cpu" else "cuda", *(["--process-time"] if process_time else [])]
    return shlex.join(str(w) for w in words)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value; missing (None, NaN) as None."""
    if not isinstance(value, str) and pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _order(config: Mapping[str, object]) -> tuple:
    """How series sort: by their fields in config order, numbers as numbers."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in config.values())


def build_series(df: pd.DataFrame, runs: pd.DataFrame, samples: RunSamples, threshold_pct: float) -> list[Series]:
    """The series of the rows of `read_rows`, their points in the order of `order_runs`, without steps yet."""
    df = df.assign(machine=_machines(df))
    found: dict[tuple, tuple[dict, str, str, list[Point]]] = {}
    for (run, machine), rows in df.groupby(["run", "machine"], sort=False):
        ok = ok_rows(_with_intervals(rows, samples))
        if ok.empty:
            continue
        about = ok.groupby(_KEYS, dropna=False).agg(cell_ids=("cell_id", tuple),
                                                    **{f: (f, "first") for f in ENVIRONMENT}).reset_index()
        commit, dirty = (_plain(runs.at[run, f]) for f in ("commit", "dirty"))
        medians = config_medians(ok).merge(about, on=_KEYS)
        for _, med in medians[medians["throughput"] > 0].iterrows():  # false for nan
            config = {k: _plain(med[k]) for k in SERIES_KEYS}
            point = Point(run, int(runs.at[run, "position"]), commit, None if dirty is None else bool(dirty),
                          float(med["throughput"]),
                          log_variance(med["throughput"], med["throughput_ci_low"], med["throughput_ci_high"]),
                          med["cell_ids"], {f: _plain(med[f]) for f in ENVIRONMENT})
            key = (*map(str, config.values()), machine)
            found.setdefault(key, (config, machine, str(med["device"]), []))[3].append(point)
    out = []
    for config, machine, device, points in sorted(found.values(), key=lambda f: (_order(f[0]), f[1])):
        points.sort(key=lambda p: p.position)
        command = run_command(config, device, _preset(points[-1].run), machine.endswith(PROCESS_CPU))
        out.append(Series(config, machine, command, points, threshold_pct=threshold_pct))
    return out


def load_history(roots: Sequence[Path], alpha: float = DEFAULT_ALPHA,
                 threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> History:
    """Read every run under `roots`, build the series and find their steps (bench.regress.changepoints).

    UsageError for a root that is not a directory, no run directory under the roots, or runs without a
    measured sweep cell.
    """
    found = find_runs(roots)
    where = ", ".join(map(str, roots))
    if not found:
        raise UsageError(f"no run directories (with results.jsonl or results.parquet) under {where}")
    df = read_rows(found)
    if ok_rows(df).empty:
        raise UsageError(f"the {len(found)} run directories under {where} hold no ok cell of an `rvbench run` sweep")
    runs, samples = order_runs(df), RunSamples()
    series = build_series(df, runs, samples, threshold_pct)
    for s in series:
        s.steps = steps(s.points, samples, int(s.config["batch_size"]), alpha, threshold_pct)
    return History(list(roots), list(runs.index), series, alpha, threshold_pct)
