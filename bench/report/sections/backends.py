"""The report's Backends section: configurations measured on a deployment backend (ONNX Runtime, OpenVINO,
TensorRT) beside the same configuration in eager PyTorch, and what each export cost.

A backend row is compared with its eager counterpart: the same arch, impl, batch, image size, precision, layout,
mode and device, eager with compile "none". Eager's compiled variants of that configuration are listed beside the
backends, since they answer the same question (how fast can this model run here). Throughput and latency are
medians over rounds (`per_config`); parity is the worst round's (a backend's output does not change between
rounds, so any round that drifted is the one to show). `fastest_backends` names, per arch and batch, the fastest
variant whose output passed parity: what the run summary prints.
"""

from __future__ import annotations

import pandas as pd

from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import config_keys
from bench.report.tables import Table, fmt, text
from bench.results.analysis import ok_rows

KEYS = config_keys(impl=True)
# What a backend row shares with its eager counterpart (and with eager's compiled variants).
SIBLING = [k for k in KEYS if k not in ("backend", "compile")]
_PARITY = {"parity_cos": "min", "parity_top1": "min", "parity_max_abs": "max", "parity_ok": "min"}


def _parity(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration with a backend, its worst parity over the ok rounds (KEYS + the _PARITY columns)."""
    rows = ok_rows(df)
    rows = rows[rows["backend"].fillna(DEFAULT_BACKEND) != DEFAULT_BACKEND]
    numeric = rows[KEYS].assign(**{c: pd.to_numeric(rows[c], errors="coerce") for c in _PARITY})
    return numeric.groupby(KEYS, dropna=False).agg(_PARITY).reset_index()


def _groups(configs: pd.DataFrame, df: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.Series | None]]:
    """Each configuration measured on a backend: its variants (eager ones, then backends; parity merged in) and its
    eager baseline row (None when eager did not run it)."""
    if "backend" not in configs or not (configs["backend"] != DEFAULT_BACKEND).any():
        return []
    merged = configs.merge(_parity(df), on=KEYS, how="left")
    out = []
    for _, rows in merged.groupby(SIBLING, sort=False, dropna=False):
        if not (rows["backend"] != DEFAULT_BACKEND).any():
            continue
        rows = rows.assign(_eager=rows["backend"] != DEFAULT_BACKEND).sort_values(["_eager", "backend", "compile"])
        base = rows[(rows["backend"] == DEFAULT_BACKEND) & (rows["compile"] == "none")]
        out.append((rows.drop(columns="_eager"), base.iloc[0] if len(base) else None))
    return out


def _speedup(row: pd.Series, base: pd.Series | None) -> float | None:
    return None if base is None or not base["throughput"] > 0 else row["throughput"] / base["throughput"]


def backends_table(configs: pd.DataFrame, df: pd.DataFrame) -> Table:
    """Per configuration measured on a backend: each variant's img/s, speed ÷ eager, p50 and p99, and for backend
    rows the parity against eager fp32 (cosine, top-1 agreement, largest difference, pass). `configs` is
    `per_config` of the sweep's rows `df`."""
    columns = ["arch", "impl", "batch", "variant", "backend", "img/s", "speed ÷ eager", "p50 ms", "p99 ms",
               "parity cos", "top-1 agree", "max abs diff", "parity"]
    rows = []
    for variants, base in _groups(configs, df):
        for _, r in variants.iterrows():
            eager = r["backend"] == DEFAULT_BACKEND
            parity = ["", "", "", ""] if eager else [
                fmt(r["parity_cos"], 6), fmt(r["parity_top1"], 2), f"{r['parity_max_abs']:.1e}",
                "–" if pd.isna(r["parity_ok"]) else "pass" if r["parity_ok"] else "FAIL"]
            rows.append([text(r["arch"]), text(r["impl"]), fmt(r["batch_size"]), text(r["variant"]),
                         text(r["backend"]), fmt(r["throughput"]), fmt(_speedup(r, base), 2),
                         fmt(r["step_ms_p50"], 3), fmt(r["step_ms_p99"], 3), *parity])
    note = ("Speed ÷ eager: throughput over the same configuration's in eager PyTorch without compile (– when eager "
            "did not run it). Parity: the backend's logits on the cell's fixed batch against eager fp32 PyTorch's, "
            "worst round; FAIL rows are timed but their output is not the model's.")
    return Table(columns, rows, note)


def exports_table(df: pd.DataFrame) -> Table:
    """What each backend's model cost to make: per arch, impl, image size and backend, the export's seconds, the
    model file's size, how it was exported, and the threads and hints (per batch) the backend ran with."""
    rows_ok = ok_rows(df)
    rows_ok = rows_ok[rows_ok["backend"].fillna(DEFAULT_BACKEND) != DEFAULT_BACKEND]
    keys = ["arch", "impl", "image_size", "precision", "backend"]
    rows = []
    for _, cells in rows_ok.sort_values([*keys, "batch_size"]).groupby(keys, sort=False, dropna=False):
        r = cells.iloc[0]
        threads = sorted({int(t) for t in pd.to_numeric(cells["backend_threads"], errors="coerce").dropna()})
        hints = ", ".join(f"{h} at bs{b}" for b, h in dict(zip(cells["batch_size"], cells["backend_hint"])).items()
                          if isinstance(h, str))
        rows.append([text(r["arch"]), text(r["impl"]), fmt(r["image_size"]), text(r["precision"]), text(r["backend"]),
                     fmt(r["export_s"], 2), fmt(r["model_mb"], 1), text(r["export_note"]).removesuffix(", cached"),
                     ", ".join(map(str, threads)) or "–", hints or "–"])
    return Table(["arch", "impl", "px", "precision", "backend", "export s", "model MiB", "export", "threads", "hint"],
                 rows, "Exported once per arch, impl and image size in each worker (fp32; a backend's precision is "
                       "its own setting); the backends that reuse an export show its seconds.")


def fastest_backends(configs: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    """Per arch and batch measured on a backend: the fastest variant whose output passed parity (eager's pass by
    definition), with its speed ÷ eager, e.g. "resnet50 bs8: fp32 +openvino (rv) 212.4 img/s, 1.84x eager"."""
    lines = []
    for variants, base in _groups(configs, df):
        passed = variants[(variants["backend"] == DEFAULT_BACKEND) | (variants["parity_ok"] == 1)]
        if passed.empty:
            continue
        best = passed.loc[passed["throughput"].idxmax()]
        speedup = _speedup(best, base)
        lines.append(f"{best['arch']} bs{best['batch_size']} {best['image_size']}px: {best['variant']} ({best['impl']}) "
                     f"{best['throughput']:,.1f} img/s" + (f", {speedup:.2f}x eager" if speedup else ""))
    return lines
