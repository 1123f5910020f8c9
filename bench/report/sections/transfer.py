"""The report's transfer-learning section: validation accuracy against time, one curve per strategy and
implementation, and the table of runs (time to target, final accuracy)."""

from __future__ import annotations

import pandas as pd
from matplotlib.lines import Line2D

from bench.report.style import IMPL_COLORS, Plot, encode, facet_grid, skipped, theme
from bench.report.tables import Table, fmt, text
from bench.results.transfer import epoch_rows, run_summary

STYLES = {"linear": ":", "staged": "-.", "full": "-", "scratch": "--"}


def accuracy_vs_time(df: pd.DataFrame) -> Plot:
    """Validation top-1 after each epoch against cumulative training + evaluation time, one panel per arch and
    precision; colour = implementation, line style = strategy, the dotted line the target."""
    title = "Transfer: validation accuracy vs time"
    epochs = epoch_rows(df)
    if epochs.empty:
        return skipped("transfer_accuracy", title, "No transfer run finished an epoch.")
    theme()
    panels = sorted(epochs[["arch", "precision", "image_size"]].drop_duplicates().itertuples(index=False, name=None))
    fig, axes = facet_grid(len(panels))
    for ax, (arch, precision, size) in zip(axes, panels):
        mine = epochs[(epochs["arch"] == arch) & (epochs["precision"] == precision) & (epochs["image_size"] == size)]
        for (impl, strategy, weights), run in mine.groupby(["impl", "strategy", "weights"], sort=True):
            ax.plot(run["time_s"], 100 * run["val_top1"], color=IMPL_COLORS[impl],
                    linestyle=STYLES[strategy], marker="o", markersize=3)
        for target in mine["target_acc"].astype(float).unique():
            ax.axhline(100 * target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("time: training + evaluation (s)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"{arch} · {precision} · {size}px", fontsize=10)
    handles = [Line2D([], [], color=IMPL_COLORS[i], marker="o", label=i) for i in IMPL_COLORS if i in set(epochs["impl"])]
    handles += [Line2D([], [], color="grey", linestyle=STYLES[s], label=s) for s in STYLES if s in set(epochs["strategy"])]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    fig.tight_layout()
    caption = ("One point per epoch. Strategies that start from random weights (weights 'random' in the table) "
               "are from-scratch runs whatever their name.")
    return encode(fig, "transfer_accuracy", title, caption)


def runs_table(df: pd.DataFrame) -> Table:
    """Per run: weights, epochs, final and best top-1, time to the target (or "not reached"), images/s."""
    summary = run_summary(df)
    table = Table(["arch", "impl", "strategy", "weights", "precision", "epochs", "final top-1 %", "best top-1 %",
                   "time to target s", "total s", "img/s", "note"])
    for _, r in summary.iterrows():
        reached = fmt(r["time to target s"]) if pd.notna(r["time to target s"]) else f"not reached ({fmt(r['target %'], 0)}%)"
        table.rows.append([r["arch"], r["impl"], r["strategy"], text(r["weights"]), r["precision"], fmt(r["epochs"]),
                           fmt(r["final top-1 %"]), fmt(r["best top-1 %"]), reached, fmt(r["total s"]),
                           fmt(r["img/s"]), text(r["message"])])
    return table
