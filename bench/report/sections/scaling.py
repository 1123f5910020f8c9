"""The report's Scaling section, from the ddp-train rows of `rvbench scale`: throughput against the
number of ranks (with ideal linear scaling), weak-scaling efficiency, and the communication share of
the step (hidden under compute or exposed), plus the table the terminal prints too.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.report.style import Plot, encode, impl_palette, skipped, theme
from bench.report.tables import Table, fmt
from bench.report.text import format_table
from bench.columns import DDP_MODE

MB = 2**20
_KEYS = ["arch", "impl", "precision", "batch_size", "image_size"]
COLUMNS = ["arch", "impl", "ranks", "nodes", "img/s", "p50 ms (slowest rank)", "efficiency", "comm ms/step",
           "comm share", "comm hidden", "all-reduced MiB/step", "grad MiB", "ring bound ms", "link GB/s", "memory MiB"]


def scaling_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of `rvbench scale`, by arch, impl and world size."""
    rows = df[(df["mode"] == DDP_MODE) & (df["status"] == "ok")] if "world_size" in df else df.iloc[0:0]
    return rows.sort_values([*_KEYS, "world_size"], kind="stable")


def _memory(row: pd.Series) -> float | None:
    """The largest rank's memory: CUDA peak allocated, or on a CPU RSS growth."""
    for column in ("mem_peak_alloc_mb", "mem_rss_delta_mb"):
        if pd.notna(row.get(column)):
            return float(row[column])
    return None


def _values(row: pd.Series) -> list:
    def number(column: str, digits: int, scale: float = 1.0) -> float | None:
        return None if pd.isna(row.get(column)) else round(float(row[column]) / scale, digits)

    memory = _memory(row)
    return [row["arch"], row["impl"], int(row["world_size"]), int(row["nnodes"]), number("throughput", 1),
            number("step_ms_p50", 2), number("scaling_efficiency", 3), number("comm_ms", 2), number("comm_share", 3),
            number("comm_overlap", 3), number("allreduce_bytes", 2, MB), number("grad_bytes", 2, MB),
            number("allreduce_bound_ms", 3), number("link_gbytes_s", 1), None if memory is None else round(memory, 1)]


def _memory_note(rows: pd.DataFrame) -> str:
    return ("memory: CUDA peak allocated of the largest rank" if rows["mem_peak_alloc_mb"].notna().any()
            else "memory: RSS growth of the largest rank (approximate)")


def scaling_table(df: pd.DataFrame) -> Table:
    """The Scaling table of the page: one row per implementation and world size."""
    rows = scaling_rows(df)
    table = Table(COLUMNS)
    if rows.empty:
        return table
    for _, row in rows.iterrows():
        values = _values(row)
        table.rows.append([*map(str, values[:4]), *(fmt(v, 3 if i in (6, 8, 9, 12) else 2) for i, v in enumerate(values[4:], 4))])
    table.note = (f"efficiency: (img/s per rank) / (img/s per rank at {int(rows['scaling_base'].iloc[0])} rank(s)), "
                  "fixed batch per rank; comm: collectives from the profiler, mean over ranks, share of the profiled "
                  "step and share hidden under compute; ring bound: 2(n-1)/n x bytes / link (GB/s = 10^9 bytes/s per "
                  f"direction); {_memory_note(rows)}.")
    return table


def scaling_text(df: pd.DataFrame) -> str:
    """The terminal's and summary.txt's view of a scale run: status counts and the table."""
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    rows = scaling_rows(df)
    if rows.empty:
        return f"world sizes: {counts}\n(none finished)\n"
    table = format_table(COLUMNS, [_values(row) for _, row in rows.iterrows()], left=2)
    return f"world sizes: {counts}\n{table}\n({_memory_note(rows)})\n"


def _series(rows: pd.DataFrame):
    """(label, colour, rows) per measured configuration, coloured by implementation."""
    palette = impl_palette(rows["impl"])
    for keys, part in rows.groupby(_KEYS, sort=False):
        arch, impl, precision, batch, size = keys
        yield f"{arch} {impl} {precision} bs{batch}/rank {size}px", palette[impl], part


def throughput(df: pd.DataFrame) -> Plot:
    """Total images/s against ranks, with ideal linear scaling from the smallest world size dashed."""
    title = "Throughput vs ranks"
    rows = scaling_rows(df)
    if rows.empty:
        return skipped("scaling_throughput", title, "No world size finished.")
    theme()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, color, part in _series(rows):
        ax.plot(part["world_size"], part["throughput"], "o-", color=color, label=label)
        first = part.iloc[0]
        ax.plot(part["world_size"], first["throughput"] * part["world_size"] / first["world_size"], "--",
                color=color, alpha=0.5)
    ranks = sorted(rows["world_size"].unique())
    ax.set(xscale="log", xlabel="ranks (world size, log2 scale)", ylabel="images/s, all ranks", ylim=(0, None))
    ax.set_xticks(ranks, [str(int(r)) for r in ranks])
    ax.minorticks_off()
    ax.legend(fontsize="small")
    return encode(fig, "scaling_throughput", title, "Dashed: ideal linear scaling from the smallest world size.")


def _bars(df: pd.DataFrame, key: str, title: str, draw) -> Plot:
    rows = scaling_rows(df)
    if rows.empty:
        return skipped(key, title, "No world size finished.")
    theme()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = list(_series(rows))
    ranks = sorted(rows["world_size"].unique())
    width = 0.8 / len(series)
    for i, (label, color, part) in enumerate(series):
        x = np.array([ranks.index(r) for r in part["world_size"]]) + (i - (len(series) - 1) / 2) * width
        draw(ax, x, width, part, color, label)
    ax.set_xticks(range(len(ranks)), [str(int(r)) for r in ranks])
    ax.set_xlabel("ranks (world size)")
    ax.legend(fontsize="small")
    return fig


def efficiency(df: pd.DataFrame) -> Plot:
    """Weak-scaling efficiency per world size (1 = linear)."""
    title = "Weak-scaling efficiency"

    def draw(ax, x, width, part, color, label):
        ax.bar(x, part["scaling_efficiency"], width, color=color, label=label)
        ax.axhline(1.0, color="grey", linewidth=1, linestyle=":")
        ax.set_ylabel("efficiency (1 = linear)")

    fig = _bars(df, "scaling_efficiency", title, draw)
    if isinstance(fig, Plot):
        return fig
    return encode(fig, "scaling_efficiency", title,
                  "(images/s per rank) / (images/s per rank at the smallest world size), fixed batch per rank.")


def communication(df: pd.DataFrame) -> Plot:
    """Communication share of the profiled step, split into the part hidden under compute and the exposed part."""
    title = "Communication share of the step"

    def draw(ax, x, width, part, color, label):
        share = part["comm_share"].astype(float).fillna(0.0)
        hidden = share * part["comm_overlap"].astype(float).fillna(0.0)
        ax.bar(x, share - hidden, width, color=color, label=f"{label}: exposed")
        ax.bar(x, hidden, width, bottom=share - hidden, color=color, alpha=0.4, label=f"{label}: hidden under compute")
        ax.set_ylabel("collective time / step time")

    fig = _bars(df, "scaling_comm", title, draw)
    if isinstance(fig, Plot):
        return fig
    return encode(fig, "scaling_comm", title, "From torch.profiler over the profiled steps, mean over ranks: NCCL "
                  "kernels on CUDA, gloo's collective threads on a CPU.")
