"""Shape the per-config medians (bench.results.analysis) into what the report shows: variants, order.

A "config" is a results row without its round; rounds are repeats, so the report shows their
median. The spread between rounds is what `bench.results.ratios` summarises for rv speed ÷
reference.
"""

from __future__ import annotations

import pandas as pd

from bench.config.cell import DEFAULT_BACKEND, IMPLS, MODES, variant_label
from bench.results.analysis import config_medians

BASELINE_PRECISION = "fp32"


def is_baseline(precision: str, channels_last: bool, compile_mode: str, backend: str = DEFAULT_BACKEND) -> bool:
    """fp32 eager PyTorch with the default memory format: the reference every speedup is measured against."""
    return precision == BASELINE_PRECISION and not channels_last and compile_mode == "none" and backend == DEFAULT_BACKEND


def failed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose cell did not produce a measurement (oom, error, timeout, skipped)."""
    return df[df["status"] != "ok"]


def variants(frame: pd.DataFrame) -> list[str]:
    """`variant_label` of every row of a table with precision, channels_last, compile and backend columns (a
    table without backend, e.g. ratios of runs made before the column: eager)."""
    backends = frame["backend"] if "backend" in frame else [DEFAULT_BACKEND] * len(frame)
    columns = zip(frame["precision"], frame["channels_last"], frame["compile"], backends)
    return [variant_label(p, bool(cl), c, b if isinstance(b, str) else DEFAULT_BACKEND) for p, cl, c, b in columns]


def per_config(df: pd.DataFrame) -> pd.DataFrame:
    """`config_medians` with a `variant` label, sorted so that tables and plots read in a stable order.

    The variant is `variant_label`, plus " @<N>px" when the run has several image sizes. Rows are
    sorted by arch, the canonical implementation order, mode, variant and batch size.
    """
    out = config_medians(df)
    out["variant"] = variants(out)
    if out["image_size"].nunique() > 1:
        out["variant"] = out["variant"] + " @" + out["image_size"].astype(str) + "px"
    impl_rank = {impl: i for i, impl in enumerate(IMPLS)}
    out["_impl_rank"] = out["impl"].map(impl_rank)
    out = out.sort_values(["arch", "_impl_rank", "mode", "variant", "batch_size"]).drop(columns="_impl_rank")
    return out.reset_index(drop=True)


def variant_order(configs: pd.DataFrame) -> list[str]:
    """Variants with the baseline first, so line styles mean the same thing in every plot."""
    return sorted(configs["variant"].unique(), key=lambda v: (v != BASELINE_PRECISION, v))


def panels(data: pd.DataFrame, by: list[str]) -> list[tuple]:
    """The (arch, mode, ...) combinations present, arch first then the canonical mode order."""
    mode_rank = {mode: i for i, mode in enumerate(MODES)}
    present = data[by].drop_duplicates().itertuples(index=False, name=None)
    return sorted(present, key=lambda t: (t[0], mode_rank.get(t[1], len(mode_rank)), *t[2:]))
