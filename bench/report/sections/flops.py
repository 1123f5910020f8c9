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
def _row(arch: str, impl: str, image_size: int) -> tuple[str, ...]:
    """One formatted row; counted once per process, since re-rendering a report must not recount."""
    try:
        c = flops.count(get_entry(arch, impl), image_size=image_size)
    except Exception as exc:  # noqa: BLE001 - one counter failing must not cost the whole report
        return (arch, impl, f"{image_size} px", "–", "–", "–", "–", "–", f"counting failed: {type(exc).__name__}: {exc}")
    return (
        arch, impl, f"{image_size} px", fmt(c["params"] / 1e6, 2), fmt(c["gmacs_analytic"], 3),
        fmt(c["gmacs_flopcounter"], 3), fmt(c["gflops_fvcore"], 3), fmt(c["tv_published_gmacs"], 3),
        c["fvcore_note"] or "",
    )


def flops_table(df: pd.DataFrame) -> tuple[Table, tuple[int, ...]]:
    """One row per (arch, impl, image size) in the run; returns the table and its numeric columns."""
    rank = {impl: i for i, impl in enumerate(IMPLS)}
    pairs = sorted(
        set(df[["arch", "impl", "image_size"]].itertuples(index=False, name=None)),
        key=lambda p: (p[0], rank.get(p[1], len(rank)), p[2]),
    )
    rows = [list(_row(a, i, int(s))) for a, i, s in pairs]
    return Table(COLUMNS, rows), NUMERIC
