"""The run report page: one self-contained index.html (inline CSS, inline PNG plots).

It only reads the run directory (results, samples, env.json, config.json, profiles/) and writes
index.html; what it summarises comes from bench.results.analysis, like every other view of a run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

import bench
from bench import results
from bench.columns import BY_NAME, DDP_MODE, SERVE_MODES, TRANSFER_MODE
from bench.report import REPORT_NAME, tables
from bench.report.data import per_config, variants
from bench.report.sections import derived, memory, perf, profile, scaling, serving, transfer
from bench.report.sections.backends import backends_table, exports_table, fastest_backends
from bench.report.sections.fleet import fleet_table
from bench.report.sections.flops import flops_table
from bench.report.sections.profile_tables import profile_details
from bench.report.render import render
from bench.report.summary import convergence, overhead
from bench.results.analysis import BEST_CONFIG_RULE, TIE_RULE, TIED_MARK, contention_warning, has_values
from bench.results.rundir import ENV_FILE

CSV_NAME = "results.csv"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _env(run_dir: Path, df: pd.DataFrame) -> dict:
    """env.json, or the env_* columns of the first row for a run whose env.json is missing."""
    env = _read_json(run_dir / ENV_FILE)
    env.pop("slots", None)  # a run on several slots: each one's env, shown per GPU model instead
    if env or df.empty:
        return env
    return {k: v for k, v in df.iloc[0].items() if k.startswith("env_")}


def _ratios(df: pd.DataFrame) -> pd.DataFrame:
    """bench.results.ratios with the report's variant label added."""
    out = results.ratios(df)
    out["variant"] = variants(out)
    return out


def write_report(run_dir: str | Path, out: Path | None = None) -> Path:
    """Write the page of RUN_DIR's results to `out` and return its path.

    `out` defaults to RUN_DIR/index.html; elsewhere (a read-only run directory) the page links the
    run's CSV by its path relative to the page."""
    run_dir = Path(run_dir)
    out = out or run_dir / REPORT_NAME
    df = results.load_run(run_dir)
    env = _env(run_dir, df)
    config = _read_json(run_dir / "config.json")
    # `rvbench scale` rows (one per world size) have their own section; the sweep's views leave them out.
    # `rvbench transfer` rows (epochs of training runs) and `rvbench serve` rows have their own sections too.
    sweep = df[~df["mode"].isin((DDP_MODE, TRANSFER_MODE, *SERVE_MODES))]
    transfer_plots = [transfer.accuracy_vs_time(df)] if (df["mode"] == TRANSFER_MODE).any() else []
    serving_plots = ([serving.latency_vs_load(df), serving.qps_at_slo(df), serving.batch_sizes(df)]
                     if df["mode"].isin(SERVE_MODES).any() else [])
    configs = per_config(sweep)
    scaling_plots = ([scaling.throughput(df), scaling.efficiency(df), scaling.communication(df)]
                     if not scaling.scaling_rows(df).empty else [])
    perf_plots = [perf.throughput(configs), perf.latency(configs)]
    # Measured memory is plotted where CUDA measured it; a CPU's RSS growth is too coarse to plot, so it
    # stays in the tables (labelled approximate) and the Memory section's predicted peak stands in.
    if has_values(configs, "mem_peak_alloc_mb"):
        perf_plots.append(perf.memory(configs))
    memory_plots = [memory.predicted(configs), memory.predicted_vs_measured(configs)]
    derived_plots = [
        derived.speedup(configs),
        derived.reference_ratio(_ratios(sweep)),
        derived.finetune_vs_train(configs),
        derived.mfu(configs),
        derived.energy(configs),
    ]
    profiles = profile.load_profiles(run_dir)
    profile_plots = [profile.categories(profiles), profile.roofline(profiles)] if profiles else []
    flops, flops_numeric = flops_table(sweep)
    failures = tables.failures(df)
    html = render(
        "index.html.j2",
        title=f"rvbench report · {run_dir.name}",
        run_name=run_dir.name,
        facts=[*tables.header(env, config, df), ("Wall / timed", overhead(df)),
               *([("Converged", converged)] if (converged := convergence(df)) else [])],
        warning=contention_warning(df),
        # A run of only `rvbench scale`, `transfer` or `serve` rows shows their sections, not the sweep's.
        sweep_run=not sweep.empty or len(sweep) == len(df),
        best_rule=BEST_CONFIG_RULE,
        tie_rule=TIE_RULE,
        tied_mark=TIED_MARK,
        ci_header=BY_NAME["rel_ci"].header(),
        summaries=tables.summary(configs),
        perf_plots=perf_plots,
        derived_plots=derived_plots,
        profile_plots=profile_plots,
        n_profiles=len(profiles),
        profile_details=profile_details(profiles),
        memory_plots=memory_plots,
        largest_batches=memory.largest_batches(configs),
        scaling_plots=scaling_plots,
        scaling_table=scaling.scaling_table(df),
        transfer_plots=transfer_plots,
        transfer_runs=transfer.runs_table(df),
        serving_plots=serving_plots,
        serving_table=serving.serving_table(df),
        plot_count=sum(p.png_b64 is not None for p in perf_plots + derived_plots + profile_plots + memory_plots
                       + scaling_plots + transfer_plots + serving_plots),
        flops=flops,
        flops_numeric=flops_numeric,
        compile=tables.compile_times(configs),
        max_batches=tables.max_batches(df),
        fleet=fleet_table(sweep),
        backends=backends_table(configs, sweep),
        exports=exports_table(sweep),
        fastest=fastest_backends(configs, sweep),
        failures=failures,
        n_failed=len(failures.rows),
        environment=tables.environment(env),
        csv_name=os.path.relpath(run_dir / CSV_NAME, out.parent) if (run_dir / CSV_NAME).exists() else None,
        version=bench.__version__,
    )
    results.write_atomically(out, lambda p: p.write_text(html, encoding="utf-8"))
    return out
