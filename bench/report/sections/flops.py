"""The FLOPs and parameters table: three FLOP counters side by side with torchvision's published figure."""

from __future__ import annotations

import functools

import pandas as pd

from bench.counting import flops
from bench.config.cell import IMPLS
from bench.models import get_entry
from bench.report.tables import Table, fmt

COLUMNS = [
    "arch", "impl", "image", "params (M)", "GMACs analytic", "GMACs FlopCounter",
    "fvcore total (G, 1 per MAC)", "torchvision published GMACs", "note",
]  # fmt: skip
NUMERIC = (3, 4, 5, 6, 7)


@functools.lru_cache(maxsize=None)
def _row(arch: str, impl: str, image_size: int, params: int | None, gflops: float | None) -> tuple[str, ...]:
    """One formatted row, counted once per process (re-rendering a report must not recount).

    `params` and `gflops` (FlopCounter's forward GFLOPs per image) are what the run's worker counted
    for its rows; only a pair no row carries them for (every cell failed) is counted here, on meta.
    """
    try:
        entry = get_entry(arch, impl)
        if params is None or gflops is None:
            counted = flops.count(entry, image_size=image_size)
            params, gflops = counted["params"], counted["gflops_flopcounter"]
        else:
            counted = flops.other_counts(entry, image_size)
    except Exception as exc:  # noqa: BLE001 - one counter failing must not cost the whole report
        return (arch, impl, f"{image_size} px", "–", "–", "–", "–", "–", f"counting failed: {type(exc).__name__}: {exc}")
    return (
        arch, impl, f"{image_size} px", fmt(params / 1e6, 2), fmt(counted["gmacs_analytic"], 3),
        fmt(gflops / 2, 3), fmt(counted["gflops_fvcore"], 3), fmt(counted["tv_published_gmacs"], 3),
        counted["fvcore_note"] or "",
    )


def flops_table(df: pd.DataFrame) -> tuple[Table, tuple[int, ...]]:
    """One row per (arch, impl, image size) in the run; returns the table and its numeric columns."""
    rank = {impl: i for i, impl in enumerate(IMPLS)}
    keys = ["arch", "impl", "image_size"]
    pairs = sorted(
        set(df[keys].itertuples(index=False, name=None)),
        key=lambda p: (p[0], rank.get(p[1], len(rank)), p[2]),
    )
    counted = df[keys + ["params_total", "gflops_per_image"]].dropna().drop_duplicates(keys)
    known = {(a, i, int(s)): (int(p), float(g)) for a, i, s, p, g in counted.itertuples(index=False, name=None)}
    rows = [list(_row(a, i, int(s), *known.get((a, i, int(s)), (None, None)))) for a, i, s in pairs]
    return Table(COLUMNS, rows), NUMERIC
