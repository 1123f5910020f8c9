"""Plots of raw performance against batch size: throughput, latency percentiles, peak memory."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from bench.columns import BY_NAME
from bench.report.data import panels, variant_order
from bench.report.style import Plot, encode, facet_grid, impl_palette, log2_batch_axis, skipped, theme
from bench.results.analysis import INTERVALS, has_values, memory_column


# Line style and marker of each variant, in variant order (colour is the implementation's).
VARIANT_STYLES = [("-", "o"), ("--", "X"), (":", "s"), ("-.", "P"), ((0, (5, 1, 1, 1)), "D"), ((0, (1, 3)), "^")]


def facet_lines(configs: pd.DataFrame, y: str, key: str, title: str, caption: str, ylabel: str | None = None) -> Plot:
    """Line plot of `y` vs batch size: one panel per (arch, mode) measured, colour impl, style variant.

    The axis is labelled as bench.columns declares `y`, or `ylabel` for a derived quantity. A `y` with
    an interval over rounds (bench.results.analysis.INTERVALS) gets an error bar per configuration,
    its 95% interval, where the configuration has one.

    Where a panel has several configurations of one impl, variant and batch size (two image sizes,
    say), the line goes through their mean. Drawn with matplotlib directly: seaborn's relplot lays a
    figure out several times over, most of a report's time."""
    theme()
    data = configs[configs[y].notna()]
    combos = panels(data, ["arch", "mode"])
    palette = impl_palette(data["impl"])
    variants = variant_order(data)
    styles = {v: VARIANT_STYLES[i % len(VARIANT_STYLES)] for i, v in enumerate(variants)}
    fig, axes = facet_grid(len(combos))
    for ax, (arch, mode) in zip(axes, combos):
        rows = data[(data["arch"] == arch) & (data["mode"] == mode)]
        for (impl, variant), line in rows.groupby(["impl", "variant"], sort=False):
            means = line.groupby("batch_size")[y].mean()
            dash, marker = styles[variant]
            ax.plot(means.index, means.values, color=palette[impl], linestyle=dash, marker=marker, markersize=5)
            if y in INTERVALS:
                error_bars(ax, line, y, palette[impl])
        log2_batch_axis(ax, rows["batch_size"])
        ax.set_ylabel(ylabel or BY_NAME[y].axis_label())
        ax.set_ylim(bottom=0)
        ax.set_title(f"{arch} · {mode}", fontsize=10)
    handles = [Line2D([], [], color=color, marker="o", label=impl) for impl, color in palette.items()]
    handles += [Line2D([], [], color="grey", linestyle=styles[v][0], marker=styles[v][1], label=v) for v in variants]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    fig.tight_layout()
    return encode(fig, key, title, caption)


def error_bars(ax, rows: pd.DataFrame, y: str, color: str) -> None:
    """Each row's 95% interval of `y` over rounds (INTERVALS) as an error bar at its batch size; rows without
    one (a run made before rows carried intervals) get none. The bar's lengths are clipped at 0, so a
    median at (or, from rounding, a hair past) an end of its interval draws, where matplotlib would raise."""
    low, high = INTERVALS[y]
    rows = rows.dropna(subset=[low, high])
    if rows.empty:
        return
    below = (rows[y] - rows[low]).clip(lower=0)
    above = (rows[high] - rows[y]).clip(lower=0)
    ax.errorbar(rows["batch_size"], rows[y], yerr=[below, above], fmt="none", ecolor=color, elinewidth=1.2,
                capsize=3)


def throughput(configs: pd.DataFrame) -> Plot:
    """Images per second vs batch size, per arch (and mode), coloured by implementation."""
    title = "Throughput vs batch size"
    if not has_values(configs, "throughput"):
        return skipped("throughput", title, "No cell measured successfully.")
    return facet_lines(
        configs,
        "throughput",
        "throughput",
        title,
        "Median over rounds of batch / p50 step time; error bars: its 95% interval over rounds (batch / the p50's "
        "interval). Line style is the precision / layout / compile variant.",
    )


def memory(configs: pd.DataFrame) -> Plot:
    """Peak memory vs batch size (CUDA allocator peak, or CPU RSS growth when that is all there is)."""
    title = "Peak memory vs batch size"
    memory = memory_column(configs)
    if memory is None:
        return skipped("memory", title, "No memory measurement in this run.")
    return facet_lines(configs, memory.name, "memory", title, "Median over rounds.")


def _band(ax, rows: pd.DataFrame, color: str) -> None:
    """p50 line with shaded p50-p90 and p90-p99 bands (error bars when there is a single batch size)."""
    rows = rows.sort_values("batch_size")
    x = rows["batch_size"].to_numpy()
    p50, p90, p99 = (rows[c].to_numpy() for c in ("step_ms_p50", "step_ms_p90", "step_ms_p99"))
    ax.plot(x, p50, marker="o", color=color, linewidth=1.8)
    error_bars(ax, rows, "step_ms_p50", color)
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
        ax.set_ylabel(f"step time ({BY_NAME['step_ms_p50'].unit})")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{arch} · {mode} · {variant}", fontsize=9)
    handles = [plt.Line2D([], [], color=color, marker="o", label=impl) for impl, color in palette.items()]
    fig.legend(handles=handles, title="impl", loc="upper left", bbox_to_anchor=(1.0, 0.98))
    fig.tight_layout()
    caption = ("Line: p50 step time, error bars its 95% interval over rounds; dark band up to p90; light band up to "
               "p99 (medians over rounds).")
    return encode(fig, "latency", title, caption)
