"""Shared look of every report plot: fixed implementation colours, log2 batch axes, PNG inlining.

Every plot module draws through these helpers so that "rv" has the same colour in every figure of
every report, and so that a figure always ends up as a self-contained base64 PNG (no files, no URLs).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from bench.config.cell import IMPLS  # noqa: E402

MAX_COLS = 3  # facets per row before wrapping

IMPL_COLORS = {"rv": "#c0392b", "torchvision": "#2471a3", "timm": "#229954"}
assert set(IMPL_COLORS) == set(IMPLS), "every implementation needs a fixed colour"

DPI = 110


@dataclass(frozen=True)
class Plot:
    """One rendered figure (`png_b64` set) or the reason it was not drawn (`note` set)."""

    key: str
    title: str
    caption: str = ""
    png_b64: str | None = None
    note: str | None = None


def skipped(key: str, title: str, note: str) -> Plot:
    """A plot that has no data in this run: shown as a short note, never as an empty figure."""
    return Plot(key=key, title=title, note=note)


def theme() -> None:
    """Apply the report's seaborn theme (called before each figure so globals can't drift)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def impl_palette(impls) -> dict[str, str]:
    """Palette restricted to the implementations present, in the canonical order."""
    return {impl: IMPL_COLORS[impl] for impl in IMPLS if impl in set(impls)}


def log2_batch_axis(ax, batches) -> None:
    """Log-2 x axis with a labelled tick at each batch size actually measured."""
    ticks = sorted({int(b) for b in batches})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.set_xlabel("batch size (images, log2 scale)")


def encode(fig, key: str, title: str, caption: str = "") -> Plot:
    """Render a matplotlib figure to an inline PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return Plot(key=key, title=title, caption=caption, png_b64=base64.b64encode(buf.getvalue()).decode("ascii"))


def facet_grid(n_panels: int, row_height: float = 1.0) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of `n_panels` facets, MAX_COLS to a row, each `facet_size` (rows `row_height` times as
    tall); the unused places of the last row are removed. Returns the figure and its axes in reading order."""
    n_cols = min(n_panels, MAX_COLS)
    n_rows = -(-n_panels // n_cols)
    height, aspect = facet_size(n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(height * aspect * n_cols, height * row_height * n_rows),
                             squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.remove()
    return fig, list(axes.flat[:n_panels])


def facet_size(n_cols: int) -> tuple[float, float]:
    """Height and aspect of one facet so that a row of `n_cols` facets stays about 11 in wide."""
    height = 3.4
    width = min(5.5, 11.0 / max(n_cols, 1))
    return height, width / height
