"""Plots of derived quantities: speedups over fp32 eager, rv speed ÷ reference, finetune vs train,
MFU and energy per image."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
import pandas as pd
import seaborn as sns

from bench.columns import speed_label
from bench.report.data import is_baseline, panels, variant_order
from bench.report.sections.perf import facet_lines
from bench.report.style import IMPL_COLORS, Plot, encode, facet_grid, impl_palette, log2_batch_axis, skipped, theme
from bench.results.analysis import PEAK_MEMORY, has_values

_MATCH = ["arch", "impl", "mode", "batch_size", "image_size"]


def speedup_table(configs: pd.DataFrame) -> pd.DataFrame:
    """Throughput of every non-baseline variant divided by fp32 eager of the same arch/impl/mode/batch."""
    # A Series (not a list) so that a run with no measured config selects zero rows, not zero columns.
    base_mask = pd.Series(
        [is_baseline(p, bool(cl), c, b) for p, cl, c, b in
         zip(configs["precision"], configs["channels_last"], configs["compile"], configs["backend"])],
        index=configs.index,
        dtype=bool,
    )
    base = configs[base_mask][[*_MATCH, "throughput"]].rename(columns={"throughput": "baseline"})
    others = configs[~base_mask]
    merged = others.merge(base, on=_MATCH)
    merged["speedup"] = merged["throughput"] / merged["baseline"]
    return merged[merged["speedup"].notna()]


def speedup(configs: pd.DataFrame) -> Plot:
    """Heatmap per arch: rows impl x mode x batch, columns variant, value = speedup over fp32 eager."""
    title = "Speedup of AMP / low precision and compile over fp32 eager"
    table = speedup_table(configs)
    if table.empty:
        return skipped("speedup", title, "The run has no variant measured next to fp32 eager at the same batch size.")
    theme()
    archs = sorted(table["arch"].unique())
    pivots = []
    for arch in archs:
        rows = table[table["arch"] == arch].copy()
        rows["config"] = rows["impl"] + " · " + rows["mode"] + " · bs" + rows["batch_size"].astype(str)
        pivot = rows.pivot_table(index="config", columns="variant", values="speedup", aggfunc="median", sort=False)
        pivots.append(pivot[[v for v in variant_order(rows) if v in pivot.columns]])
    height = max(2.5, 0.42 * max(len(p) for p in pivots) + 1.2)
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), height), squeeze=False)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(0.5, float(table["speedup"].min())), vmax=max(2.0, float(table["speedup"].max())))
    for i, (ax, arch, pivot) in enumerate(zip(axes[0], archs, pivots)):
        last = i == len(archs) - 1
        sns.heatmap(
            pivot, ax=ax, annot=True, fmt=".2f", cmap="RdBu", norm=norm, linewidths=0.5,
            cbar=last, cbar_kws={"label": "speedup over fp32 eager (x)"} if last else None,
        )
        ax.set_title(arch)
        ax.set_xlabel("variant")
        ax.set_ylabel("impl · mode · batch size")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return encode(fig, "speedup", title, "Above 1 (blue): faster than fp32 eager of the same implementation.")


def reference_ratio(ratios: pd.DataFrame) -> Plot:
    """rv speed ÷ torchvision and ÷ timm (throughput ratios) vs batch size, with the spread over rounds."""
    title = f"{speed_label('reference')} (throughput ratio)"
    if ratios.empty:
        return skipped("ratio", title, "No configuration has rv and a reference implementation both measured.")
    theme()
    combos = panels(ratios, ["arch", "mode"])
    variants = variant_order(ratios)
    styles = dict(zip(variants, ["-", "--", ":", "-."] * len(variants)))
    fig, axes = facet_grid(len(combos))
    for ax, (arch, mode) in zip(axes, combos):
        rows = ratios[(ratios["arch"] == arch) & (ratios["mode"] == mode)]
        for (reference, variant), line in rows.groupby(["reference", "variant"], sort=True):
            line = line.sort_values("batch_size")
            ax.errorbar(
                line["batch_size"], line["ratio_median"], yerr=line["ratio_iqr"] / 2, color=IMPL_COLORS[reference],
                linestyle=styles[variant], marker="o", capsize=3,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        log2_batch_axis(ax, rows["batch_size"])
        ax.set_ylabel(f"{speed_label('reference')} (x; above 1: rv faster)")
        ax.set_title(f"{arch} · {mode}", fontsize=10)
    handles = [Line2D([], [], color=IMPL_COLORS[r], marker="o", label=speed_label(r)) for r in sorted(ratios["reference"].unique())]
    handles += [Line2D([], [], color="grey", linestyle=styles[v], label=v) for v in variants]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    fig.tight_layout()
    caption = (
        "Median of per-round ratios (implementations run back to back within a round); error bars are as long "
        "as the interquartile range over rounds. Above 1: rv is faster."
    )
    return encode(fig, "ratio", title, caption)


def finetune_vs_train(configs: pd.DataFrame) -> Plot:
    """Time per image and peak memory of a finetune step next to a full train step."""
    title = "Finetune vs full train cost"
    modes = configs[configs["mode"].isin(["train", "finetune"])]
    both = modes.groupby(["arch", "impl", "variant", "batch_size"])["mode"].transform("nunique") == 2
    modes = modes[both]
    if modes.empty:
        return skipped("finetune", title, "The run has no configuration measured in both train and finetune mode.")
    theme()
    # One batch size per (arch, impl, variant): the largest one measured in both modes.
    largest = modes.groupby(["arch", "impl", "variant"])["batch_size"].transform("max")
    modes = modes[modes["batch_size"] == largest].copy()
    modes["ms_per_image"] = 1000.0 / modes["throughput"]
    modes["label"] = (
        modes["arch"] + "\n" + modes["variant"] + " · bs" + modes["batch_size"].astype(str) + "\n" + modes["mode"]
    )
    modes = modes.sort_values(["arch", "variant", "mode"], ascending=[True, True, False])
    memory = [(PEAK_MEMORY.name, PEAK_MEMORY.axis_label())] if has_values(modes, PEAK_MEMORY.name) else []
    panels = [("ms_per_image", "step time per image (ms)"), *memory]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    palette = impl_palette(modes["impl"])
    for ax, (column, label) in zip(axes[0], panels):
        sns.barplot(
            data=modes, x="label", y=column, hue="impl", palette=palette, hue_order=list(palette), ax=ax, errorbar=None
        )
        ax.set_xlabel("")
        ax.set_ylabel(label)
    fig.tight_layout()
    caption = "Largest batch size measured in both modes; finetune trains only the head (frozen backbone)."
    return encode(fig, "finetune", title, caption)


def mfu(configs: pd.DataFrame) -> Plot:
    """Model FLOP utilisation (% of the device's dense peak for the precision) vs batch size."""
    title = "Model FLOP utilisation"
    if not has_values(configs, "mfu"):
        return skipped("mfu", title, "MFU is not available: the device is not in the known-device table (or is a CPU).")
    data = configs[configs["mfu"].notna()].assign(mfu_pct=lambda d: 100.0 * d["mfu"])
    return facet_lines(data, "mfu_pct", "mfu", title, "Achieved FLOP/s over the peak for the precision.",
                       ylabel="MFU (% of dense peak)")


def energy(configs: pd.DataFrame) -> Plot:
    """Energy per image (J) vs batch size, where the device reports power."""
    title = "Energy per image"
    if not has_values(configs, "energy_j_per_image"):
        return skipped("energy", title, "Energy was not measured (no power counter on this device).")
    data = configs[configs["energy_j_per_image"].notna()]
    return facet_lines(data, "energy_j_per_image", "energy", title, "Board energy over the timed loop / images.")
