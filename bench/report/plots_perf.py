"""Plots of raw performance against batch size: throughput, latency percentiles, peak memory."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from bench.report.data import panels, variant_order
from bench.report.style import MAX_COLS, Plot, encode, facet_grid, facet_size, impl_palette, log2_batch_axis, skipped, theme
from bench.results.analysis import has_values, memory_column


def facet_lines(configs: pd.DataFrame, y: str, ylabel: str, key: str, title: str, caption: str) -> Plot:
    """Line plot of `y` vs batch size: one panel per (arch, mode) measured, hue impl, style variant."""
    theme()
    data = configs[configs[y].notna()].copy()
    data["panel"] = data["arch"] + " · " + data["mode"]
    order = [" · ".join(p) for p in panels(data, ["arch", "mode"])]
    palette = impl_palette(data["impl"])
    height, aspect = facet_size(min(len(order), MAX_COLS))
    grid = sns.relplot(
        data=data,
        x="batch_size",
        y=y,
        col="panel",
        col_order=order,
        col_wrap=min(len(order), MAX_COLS),
        hue="impl",
        palette=palette,
        hue_order=list(palette),
        style="variant",
        style_order=variant_order(data),
        markers=True,
        dashes=True,
        kind="line",
        height=height,
        aspect=aspect,
        facet_kws={"sharey": False, "sharex": False},
    )
    for panel, ax in grid.axes_dict.items():
        log2_batch_axis(ax, data.loc[data["panel"] == panel, "batch_size"])
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelleft=True, labelbottom=True)
    grid.set_titles(col_template="{col_name}")
    grid.tight_layout()
    return encode(grid.figure, key, title, caption)


def throughput(configs: pd.DataFrame) -> Plot:
    """Images per second vs batch size, per arch (and mode), coloured by implementation."""
    title = "Throughput vs batch size"
    if not has_values(configs, "throughput"):
        return skipped("throughput", title, "No cell measured successfully.")
    return facet_lines(
        configs,
        "throughput",
        "throughput (images/s)",
        "throughput",
        title,
        "Median over rounds of batch / p50 step time. Line style is the precision / layout / compile variant.",
    )


def memory(configs: pd.DataFrame) -> Plot:
    """Peak memory vs batch size (CUDA allocator peak, or CPU RSS growth when that is all there is)."""
    title = "Peak memory vs batch size"
    memory = memory_column(configs)
    if memory is None:
        return skipped("memory", title, "No memory measurement in this run.")
    return facet_lines(configs, memory.column, memory.axis_label, "memory", title, "Median over rounds.")


def _band(ax, rows: pd.DataFrame, color: str) -> None:
    """p50 line with shaded p50-p90 and p90-p99 bands (error bars when there is a single batch size)."""
    rows = rows.sort_values("batch_size")
    x = rows["batch_size"].to_numpy()
    p50, p90, p99 = (rows[c].to_numpy() for c in ("step_ms_p50", "step_ms_p90", "step_ms_p99"))
    ax.plot(x, p50, marker="o", color=color, linewidth=1.8)
    if len(x) > 1:
        ax.fill_between(x, p50, p90, color=color, alpha=0.25, linewidth=0)
        ax.fill_between(x, p90, p99, color=color, alpha=0.10, linewidth=0)
    else:
        ax.errorbar(x, p50, yerr=[[0] * len(x), p99 - p50], color=color, capsize=4, fmt="none")


def latency(configs: pd.DataFrame) -> Plot:
    """Step latency p50 with p90/p99 bands vs batch size: one panel per arch x (mode, variant)."""
    title = "Step latency (p50, p90, p99) vs batch size"
    data = configs[configs["step_ms_p50"].notna()] if "step_ms_p50" in configs else configs.iloc[0:0]
    if data.empty:
        return skipped("latency", title, "No cell measured successfully.")
    theme()
    combos = panels(data, ["arch", "mode", "variant"])
    palette = impl_palette(data["impl"])
    fig, axes = facet_grid(len(combos), row_height=0.85)
    for ax, (arch, mode, variant) in zip(axes, combos):
        cell = data[(data["arch"] == arch) & (data["mode"] == mode) & (data["variant"] == variant)]
        for impl, color in palette.items():
            impl_rows = cell[cell["impl"] == impl]
            if not impl_rows.empty:
                _band(ax, impl_rows, color)
        log2_batch_axis(ax, cell["batch_size"])
        ax.set_ylabel("step time (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{arch} · {mode} · {variant}", fontsize=9)
    handles = [plt.Line2D([], [], color=color, marker="o", label=impl) for impl, color in palette.items()]
    fig.legend(handles=handles, title="impl", loc="upper left", bbox_to_anchor=(1.0, 0.98))
    fig.tight_layout()
    caption = "Line: p50 step time; dark band up to p90; light band up to p99 (medians over rounds)."
    return encode(fig, "latency", title, caption)
