"""The report's tables as plain (columns, rows) data: header facts, per-arch summary, compile times,
failed cells and environment. Values are pre-formatted strings; the template only escapes them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.columns import BY_NAME, speed_label
from bench.config.cell import IMPLS, config_keys, variant_label
from bench.report.data import failed_rows, panels
from bench.results.analysis import (
    at_config, best_configs, best_text, is_max_batch_search, memory_column, plus_minus,
)

THROUGHPUT = BY_NAME["throughput"]


@dataclass
class Table:
    """A titled table: `rows` hold one formatted string per column."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def fmt(value, digits: int = 1) -> str:
    """Number with thousands separators and `digits` decimals; an en dash for missing values."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value):
        return text(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def text(value) -> str:
    """A value as shown verbatim (versions, ids, names): an en dash when missing, yes/no for booleans."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return str(value)


def header(env: dict, config: dict, df: pd.DataFrame) -> list[tuple[str, str]]:
    """Key facts shown at the top: device, software versions, commit, date, preset, wall time."""
    commit = str(env.get("env_git_commit") or "–")[:12]
    if env.get("env_git_dirty"):
        commit += " (dirty)"
    device = config.get("device") or (df["device"].iloc[0] if len(df) else "–")
    gpu = env.get("env_gpu_name")
    return [
        ("Device", f"{device} · {gpu}" if gpu else f"{device} · {env.get('env_cpu') or 'cpu'}"),
        ("Driver", text(env.get("env_driver"))),
        ("CUDA / cuDNN", f"{text(env.get('env_cuda'))} / {text(env.get('env_cudnn'))}"),
        ("torch", text(env.get("env_torch"))),
        ("torchvision", text(env.get("env_torchvision"))),
        ("timm", text(env.get("env_timm"))),
        ("Commit", commit),
        ("Date", text(env.get("env_timestamp"))),
        ("Preset", text(config.get("preset"))),
        ("Clock", ", ".join(sorted(df["timer"].dropna().unique())) if "timer" in df and df["timer"].notna().any()
         else "–"),
        ("Cells", f"{len(df)} ({int((df['status'] == 'ok').sum()) if len(df) else 0} ok)"),
        ("Wall time", wall_time(df)),
    ]


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def wall_time(df: pd.DataFrame) -> str:
    """How long the run took: the span from the first cell's start to the last cell's end, and the
    sum of cell times. They differ by the runner's gaps between cells, and by overlap if cells ran in
    parallel; the sum alone would hide both."""
    wall = pd.to_numeric(df["wall_s"], errors="coerce")
    total = f"{_duration(float(wall.sum()))} sum of cell times"
    start = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    end = start + pd.to_timedelta(wall.fillna(0.0), unit="s")
    if start.isna().all():
        return f"{total} (no cell start times recorded)"
    elapsed = (end.max() - start.min()).total_seconds()
    return f"{_duration(elapsed)} elapsed (first cell start to last cell end) · {total}"


def summary(configs: pd.DataFrame) -> list[dict]:
    """Per arch and mode: the best config (bench.results.analysis.best_configs, named by `best_text`: marked
    tied when it is), its runner-up, and every impl measured at it.

    Comparing impls at one config (batch, precision, layout, compile) keeps the comparison fair.
    The ± column is how far the 95% interval of the median step over rounds reaches (`plus_minus`).
    The memory column is the one `memory_column` picks, labelled as it says (approximate on a CPU).
    The table's note names the impls with contended rounds at that config (bench.measure.contention).
    """
    memory = memory_column(configs)
    winners = {(b["arch"], b["mode"]): b for _, b in best_configs(configs).iterrows()}
    out = []
    for arch, mode in panels(configs, ["arch", "mode"]):
        if (arch, mode) not in winners:
            continue  # no throughput measured in this group
        best = winners[(arch, mode)]
        same = at_config(configs, best)
        table = Table(["impl", THROUGHPUT.unit, speed_label("best", subject="impl"),
                       *(BY_NAME[c].header() for c in ("step_ms_p50", "rel_ci", "step_ms_p99")),
                       *([memory.header()] if memory else [])])
        for impl in IMPLS:
            hit = same[same["impl"] == impl]
            if hit.empty:
                table.rows.append([impl, "not measured"] + [""] * (len(table.columns) - 2))
                continue
            r = hit.iloc[0]
            table.rows.append([
                impl,
                fmt(r["throughput"]),
                f"{r['throughput'] / best['throughput']:.2f}x",
                fmt(r["step_ms_p50"], 2),
                text(plus_minus(r["rel_ci"])),
                fmt(r["step_ms_p99"], 2),
                *([fmt(r[memory.name], 0)] if memory else []),
            ])
        table.note = contended_note(same)
        out.append({
            "arch": arch,
            "mode": mode,
            "best": best_text(best),
            "throughput": fmt(best["throughput"]),
            "runner_up": best["runner_up"],
            "table": table,
        })
    return out


def contended_note(configs: pd.DataFrame) -> str:
    """Which impls of `configs` (per-config medians) ran contended rounds, e.g. "Contended (other
    processes busy during the timed loop): rv in 1 of 2 rounds."; "" when none did."""
    hit = configs[configs["contended_rounds"] > 0]
    if hit.empty:
        return ""
    rounds = ", ".join(f"{r['impl']} in {r['contended_rounds']} of {r['rounds']} round{'s' * (r['rounds'] != 1)}"
                       for _, r in hit.iterrows())
    return f"Contended (other processes busy during the timed loop): {rounds}."


def compile_times(configs: pd.DataFrame) -> Table:
    """First-call compile time and recompile count of every compiled config."""
    table = Table(["arch", "impl", "mode", "batch", "variant", "compile (s)", "recompiles"])
    compiled = configs[configs["compile"] != "none"]
    for _, r in compiled.iterrows():
        table.rows.append([
            r["arch"], r["impl"], r["mode"], str(r["batch_size"]), r["variant"],
            fmt(r["compile_s"], 1), fmt(r["recompiles"], 0),
        ])
    if compiled.empty:
        table.note = "No compiled cells in this run."
    return table


def failures(df: pd.DataFrame) -> Table:
    """Every config that failed, once per distinct status and message, with the rounds it failed in."""
    table = Table(["arch", "impl", "batch", "precision / layout", "compile", "mode", "rounds", "status", "message"])
    failed = failed_rows(df).assign(message=lambda d: d["message"].fillna("").astype(str))
    keys = [*config_keys(impl=True), "status", "message"]
    for key, rows in failed.groupby(keys, sort=True, dropna=False):
        r = dict(zip(keys, key))
        table.rows.append([
            r["arch"], r["impl"], str(r["batch_size"]),
            variant_label(r["precision"], bool(r["channels_last"]), "none", r["backend"]),
            r["compile"], r["mode"], ", ".join(str(i) for i in sorted(rows["round"])), r["status"], r["message"],
        ])
    if not table.rows:
        table.note = "Every cell measured successfully."
    return table


def max_batches(df: pd.DataFrame) -> Table:
    """Result of each `--find-max-batch` search: the largest batch that ran, and the one that ran out of memory."""
    table = Table(["arch", "impl", "precision / layout", "mode", "largest batch that fits", "out of memory at"])
    found = df[is_max_batch_search(df) & (df["status"] == "ok")]
    oom_at = found["max_batch_oom_at"] if "max_batch_oom_at" in found else pd.Series(index=found.index, dtype=float)
    for (_, r), oom in zip(found.iterrows(), oom_at):
        table.rows.append([
            r["arch"], r["impl"],
            variant_label(r["precision"], bool(r["channels_last"]), r["compile"], r["backend"]),
            r["mode"],
            fmt(int(r["batch_size"])), fmt(None if pd.isna(oom) else int(oom)),
        ])
    return table


def environment(env: dict) -> Table:
    """The run's full environment record, one row per key."""
    return Table(["key", "value"], [[k.removeprefix("env_"), text(v)] for k, v in sorted(env.items())])
