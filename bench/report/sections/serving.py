"""The report's Serving section (`rvbench serve`): latency percentiles against the offered load with the SLO line,
the highest QPS that met the SLO per batcher, the batch sizes the batcher formed, and the table of every answer."""

from __future__ import annotations

import json

import pandas as pd
from matplotlib.lines import Line2D

from bench.columns import BY_NAME
from bench.report.style import IMPL_COLORS, Plot, encode, facet_grid, skipped, theme
from bench.report.tables import Table, fmt, text
from bench.results.serving import results, summary, trials

PERCENTILES = (("lat_ms_p50", ":"), ("lat_ms_p90", "--"), ("lat_ms_p99", "-"))
BATCHER_MARKERS = "osD^vP*X"


def _panel_label(arch: str, impl: str, variant: str) -> str:
    return f"{arch} · {impl} · {variant}"


def latency_vs_load(df: pd.DataFrame) -> Plot:
    """Every Server trial: its p50, p90 and p99 latency (line style) against the QPS offered, one colour per batcher,
    one panel per configuration; the dashed red line is the SLO, filled markers met it, open ones did not."""
    title = "Serving: latency vs offered load"
    rows = trials(df)
    if rows.empty:
        return skipped("serving_latency", title, "No Server scenario ran.")
    theme()
    panels = sorted(rows[["arch", "impl", "variant"]].drop_duplicates().itertuples(index=False, name=None))
    batchers = list(dict.fromkeys(rows.sort_values(["batch_size", "max_delay_ms"])["batcher"]))
    colors = dict(zip(batchers, ("#34495e", "#e67e22", "#8e44ad", "#16a085", "#c0392b", "#2471a3")))
    fig, axes = facet_grid(len(panels))
    for ax, (arch, impl, variant) in zip(axes, panels):
        mine = rows[(rows["arch"] == arch) & (rows["impl"] == impl) & (rows["variant"] == variant)]
        for batcher, group in mine.groupby("batcher", sort=False):
            group = group.sort_values("offered_qps")
            for column, style in PERCENTILES:
                ax.plot(group["offered_qps"], group[column], color=colors[batcher], linestyle=style, linewidth=1)
            met = group["slo_met"].astype(bool)
            ax.scatter(group["offered_qps"][met], group["lat_ms_p99"][met], color=colors[batcher], s=18, zorder=3)
            ax.scatter(group["offered_qps"][~met], group["lat_ms_p99"][~met], facecolors="none",
                       edgecolors=colors[batcher], s=18, zorder=3)
        for slo in mine["slo_ms"].dropna().unique():
            ax.axhline(slo, color="#c0392b", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel(BY_NAME["offered_qps"].axis_label())
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(_panel_label(arch, impl, variant), fontsize=10)
    handles = [Line2D([], [], color=colors[b], marker="o", label=b) for b in batchers]
    handles += [Line2D([], [], color="grey", linestyle=s, label=BY_NAME[c].short) for c, s in PERCENTILES]
    handles += [Line2D([], [], color="#c0392b", linestyle="--", label="SLO (p99)")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    fig.tight_layout()
    caption = ("Latency runs from each request's scheduled arrival (Poisson) to its completion. A trial given up "
               "early (open marker: it could no longer meet the SLO) counts its unserved requests with their latency "
               "so far, so its percentiles are lower bounds.")
    return encode(fig, "serving_latency", title, caption)


def qps_at_slo(df: pd.DataFrame) -> Plot:
    """The highest offered QPS that met the SLO, a bar per configuration and batcher."""
    title = "Serving: QPS at the SLO"
    rows = results(df)
    rows = rows[rows["mode"] == "serve-server"]
    if rows.empty:
        return skipped("serving_qps", title, "No Server scenario ran.")
    theme()
    rows = rows.sort_values(["arch", "impl", "variant", "batch_size", "max_delay_ms"])
    labels = [f"{_panel_label(a, i, v)} · {b}" for a, i, v, b in
              zip(rows["arch"], rows["impl"], rows["variant"], rows["batcher"])]
    values = rows["qps_at_slo"].astype(float).fillna(0)
    fig, (ax,) = facet_grid(1, row_height=max(1.0, 0.18 * len(rows)))
    ax.barh(range(len(rows)), values, color=[IMPL_COLORS[i] for i in rows["impl"]])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    for y, (value, slo) in enumerate(zip(values, rows["slo_ms"])):
        ax.annotate(f" {value:,.1f}" if value else f" not met (p99 ≤ {slo:g} ms)", (value, y), va="center", fontsize=8)
    ax.set_xlabel(BY_NAME["qps_at_slo"].axis_label())
    fig.tight_layout()
    return encode(fig, "serving_qps", title, "MLPerf's Server figure: the highest Poisson load whose p99 latency met "
                                             "the SLO with 99% confidence (early stopping), found by a bracketing "
                                             "search.")


def batch_sizes(df: pd.DataFrame) -> Plot:
    """The batch sizes the batcher formed at each Server answer's load: the share of batches of each size."""
    title = "Serving: batches formed at the SLO's load"
    rows = results(df)
    rows = rows[(rows["mode"] == "serve-server") & rows["batch_hist"].notna() & (rows["batch_size"] > 1)]
    if rows.empty:
        return skipped("serving_batches", title, "No Server scenario ran with batching.")
    theme()
    panels = sorted(rows[["arch", "impl", "variant"]].drop_duplicates().itertuples(index=False, name=None))
    fig, axes = facet_grid(len(panels))
    for ax, (arch, impl, variant) in zip(axes, panels):
        mine = rows[(rows["arch"] == arch) & (rows["impl"] == impl) & (rows["variant"] == variant)]
        width = 0.8 / len(mine)
        for n, row in enumerate(mine.itertuples()):
            hist = {int(k): v for k, v in json.loads(row.batch_hist).items()}
            total = sum(hist.values())
            sizes = sorted(hist)
            ax.bar([s - 0.4 + width * (n + 0.5) for s in sizes], [hist[s] / total for s in sizes], width,
                   label=f"{row.batcher} at {row.offered_qps:,.1f} QPS")
        ax.set_xlabel("batch size formed")
        ax.set_ylabel("share of batches")
        ax.set_title(_panel_label(arch, impl, variant), fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return encode(fig, "serving_batches", title, "At the highest load that met the SLO: how full the batcher's "
                                                 "batches were (batch_hist).")


def serving_table(df: pd.DataFrame) -> Table:
    """Every answer: SingleStream's p90 bound, the Server's QPS at the SLO, Offline's throughput, with latencies,
    batches and queueing."""
    rows = summary(df)
    table = Table(list(rows.columns))
    numeric = set(rows.columns[6:-1])
    for _, r in rows.iterrows():
        table.rows.append([fmt(r[c], 2) if c in numeric else text(r[c]) for c in rows.columns])
    table.note = ("SingleStream: back-to-back single requests, its figure the p90's early-stopping bound (bound). "
                  "Server: QPS at SLO. Offline: achieved samples per second over one query of every sample. "
                  "queue-dominated: the share of requests that queued longer than they were served.")
    return table
