"""Shape the tidy results table into what the report shows: per-config medians over rounds, variants.

A "config" is a results row without its round (and without its device, which is the same for the
whole run). Rounds are repeats, so the report shows their median; the spread between rounds is
what `bench.results.ratios` summarises for the rv / reference ratio.
"""

from __future__ import annotations

import pandas as pd

from bench.config.cell import IMPLS, MODES
from bench.results import ok_rows

CONFIG_KEYS = ["arch", "impl", "batch_size", "image_size", "precision", "channels_last", "compile", "mode"]

# Columns the report plots or tabulates; the median over rounds is taken for each.
METRICS = [
    "throughput",
    "step_ms_p50",
    "step_ms_p90",
    "step_ms_p99",
    "mem_peak_alloc_mb",
    "mem_rss_delta_mb",
    "compile_s",
    "recompiles",
    "mfu",
    "achieved_tflops",
    "energy_j_per_image",
    "params_total",
    "params_trainable",
    "gflops_per_image",
]

BASELINE_PRECISION = "fp32"


def variant_of(precision: str, channels_last: bool, compile_mode: str) -> str:
    """Short label of a config's numeric/layout/compile variant, e.g. "amp-bf16 +cl +compile"."""
    label = precision
    if channels_last:
        label += " +cl"
    if compile_mode != "none":
        label += " +compile" if compile_mode == "default" else f" +compile:{compile_mode}"
    return label


def is_baseline(precision: str, channels_last: bool, compile_mode: str) -> bool:
    """fp32 eager with the default memory format: the reference every speedup is measured against."""
    return precision == BASELINE_PRECISION and not channels_last and compile_mode == "none"


def failed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose cell did not produce a measurement (oom, error, timeout, skipped)."""
    return df[df["status"] != "ok"]


def per_config(df: pd.DataFrame) -> pd.DataFrame:
    """Median of each metric over rounds for every successfully measured config.

    Adds `variant` (see `variant_of`) and `rounds` (how many rounds were ok). Sorted by arch, the
    canonical implementation order, mode and batch size so tables read in a stable order.
    """
    ok = ok_rows(df)
    if ok.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, *METRICS, "variant", "rounds"])
    present = [m for m in METRICS if m in ok.columns]
    numeric = ok[CONFIG_KEYS + present].copy()
    for column in present:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(CONFIG_KEYS, dropna=False, sort=False)
    out = grouped[present].median().reset_index()
    out["rounds"] = grouped.size().to_numpy()
    for column in METRICS:
        if column not in out.columns:
            out[column] = float("nan")
    out["variant"] = [
        variant_of(p, bool(cl), c) for p, cl, c in zip(out["precision"], out["channels_last"], out["compile"])
    ]
    if out["image_size"].nunique() > 1:
        out["variant"] = out["variant"] + " @" + out["image_size"].astype(str) + "px"
    impl_rank = {impl: i for i, impl in enumerate(IMPLS)}
    out["_impl_rank"] = out["impl"].map(impl_rank)
    out = out.sort_values(["arch", "_impl_rank", "mode", "variant", "batch_size"]).drop(columns="_impl_rank")
    return out.reset_index(drop=True)


def has_values(df: pd.DataFrame, column: str) -> bool:
    """Whether any row carries a measured (non-null) value in `column`."""
    return column in df.columns and bool(pd.to_numeric(df[column], errors="coerce").notna().any())


def memory_column(df: pd.DataFrame) -> tuple[str, str] | None:
    """The peak-memory column this run measured and its axis label: CUDA allocator, else CPU RSS."""
    if has_values(df, "mem_peak_alloc_mb"):
        return "mem_peak_alloc_mb", "peak allocated memory (MiB)"
    if has_values(df, "mem_rss_delta_mb"):
        return "mem_rss_delta_mb", "RSS growth during the cell (MiB, approximate)"
    return None


def variant_order(configs: pd.DataFrame) -> list[str]:
    """Variants with the baseline first, so line styles mean the same thing in every plot."""
    return sorted(configs["variant"].unique(), key=lambda v: (v != BASELINE_PRECISION, v))


def panels(data: pd.DataFrame, by: list[str]) -> list[tuple]:
    """The (arch, mode, ...) combinations present, arch first then the canonical mode order."""
    mode_rank = {mode: i for i, mode in enumerate(MODES)}
    present = data[by].drop_duplicates().itertuples(index=False, name=None)
    return sorted(present, key=lambda t: (t[0], mode_rank.get(t[1], len(mode_rank)), *t[2:]))
