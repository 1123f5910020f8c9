"""`rvbench serve`'s rows read back: each configuration's answers per scenario, one table for the terminal, the
summary file and the report's Serving section alike."""

from __future__ import annotations

import pandas as pd

from bench.columns import BY_NAME, SERVE_MODES
from bench.config.cell import variant_label
from bench.config.serving import Batcher

SERVE_KEYS = ["arch", "impl", "image_size", "precision", "channels_last", "compile", "device"]


def serve_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows `rvbench serve` wrote, with `variant` (precision, layout, compile) and `batcher` labels."""
    rows = df[df["mode"].isin(SERVE_MODES)].copy()
    if rows.empty:
        return rows.assign(variant=pd.Series(dtype=object), batcher=pd.Series(dtype=object))
    rows["variant"] = [variant_label(p, bool(c), m) for p, c, m in
                       zip(rows["precision"], rows["channels_last"], rows["compile"])]
    rows["batcher"] = [Batcher(int(b), float(d or 0)).label if m != "serve-single-stream" else "" for b, d, m in
                       zip(rows["batch_size"], rows["max_delay_ms"], rows["mode"])]
    return rows


def results(df: pd.DataFrame) -> pd.DataFrame:
    """Each scenario's answer (record "result"), failed ones included."""
    rows = serve_rows(df)
    return rows[rows["record"] == "result"]


def trials(df: pd.DataFrame) -> pd.DataFrame:
    """Every Server trial that ran (record "trial")."""
    rows = serve_rows(df)
    return rows[(rows["mode"] == "serve-server") & (rows["record"] == "trial")]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One line per answer: the configuration, the scenario, the batcher and the scenario's figure, with the
    latencies and queueing behind it."""
    rows = results(df)
    out = pd.DataFrame({
        "arch": rows["arch"], "impl": rows["impl"], "variant": rows["variant"],
        "scenario": rows["mode"].str.removeprefix("serve-"), "batcher": rows["batcher"],
        "status": rows["status"],
        BY_NAME["qps_at_slo"].header(): rows["qps_at_slo"],
        BY_NAME["achieved_qps"].header(): rows["achieved_qps"],
        BY_NAME["lat_ms_p50"].header(): rows["lat_ms_p50"], BY_NAME["lat_ms_p90"].header(): rows["lat_ms_p90"],
        BY_NAME["lat_ms_p99"].header(): rows["lat_ms_p99"], BY_NAME["lat_ms_bound"].header(): rows["lat_ms_bound"],
        BY_NAME["batch_mean"].header(): rows["batch_mean"],
        BY_NAME["queue_dominated"].header(): rows["queue_dominated"],
        "message": rows["message"],
    })
    return out.reset_index(drop=True)
