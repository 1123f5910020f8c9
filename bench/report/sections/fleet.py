"""The report's per-GPU-model comparison, for a run whose cells ran on several GPU models (a Ray
cluster of A100s, H100s and L4s, say): the same configurations side by side, one column per model.

Every row carries the environment of the slot that ran it, so `env_gpu_name` says which model
measured it. Medians over rounds are taken per model (bench.report.data.per_config on each model's
rows), so a configuration's rounds on an H100 never mix with its rounds on an L4.
"""

from __future__ import annotations

import pandas as pd

from bench.columns import speed_label
from bench.config.cell import config_keys
from bench.report.data import per_config
from bench.report.tables import Table, fmt, text
from bench.results.analysis import ok_rows


def gpu_models(df: pd.DataFrame) -> list[str]:
    """The GPU models that measured an ok row, sorted by name (none for a CPU run or an older run)."""
    if "env_gpu_name" not in df.columns:
        return []
    return sorted(ok_rows(df)["env_gpu_name"].dropna().unique())


def per_model(df: pd.DataFrame) -> pd.DataFrame:
    """Median throughput per configuration and GPU model, one column per model, in the order of
    `per_config` (with its `variant` label); empty when fewer than two models measured anything."""
    models = gpu_models(df)
    keys = config_keys(impl=True)
    if len(models) < 2:
        return pd.DataFrame(columns=[*keys, "variant", *models])
    medians = pd.concat([per_config(df[df["env_gpu_name"] == m]).assign(gpu=m) for m in models])
    order = per_config(df)[[*keys, "variant"]].drop_duplicates(keys)
    wide = medians.pivot_table(index=keys, columns="gpu", values="throughput", aggfunc="first", dropna=False)
    return order.merge(wide.reset_index(), on=keys, how="inner")[[*keys, "variant", *models]]


def fleet_table(df: pd.DataFrame) -> Table:
    """Throughput (images/s) of every configuration on every GPU model, and each model's speed
    relative to the first model where both ran it; no rows when the run used one model."""
    wide = per_model(df)
    models = list(wide.columns[len(config_keys(impl=True)) + 1:])
    base = models[0] if models else ""
    columns = ["arch", "impl", "mode", "variant", "batch", *(f"{m} img/s" for m in models),
               *(speed_label(base, subject=m) for m in models[1:])]
    rows = []
    for _, r in wide.iterrows():
        ratios = [fmt(r[m] / r[base], 2) if pd.notna(r[m]) and pd.notna(r[base]) else "–" for m in models[1:]]
        rows.append([text(r["arch"]), text(r["impl"]), text(r["mode"]), text(r["variant"]), fmt(r["batch_size"]),
                     *(fmt(r[m]) for m in models), *ratios])
    note = ("Median over the rounds each model ran. Groups go to whichever GPU is free, so a configuration "
            "a model never got shows –; to compare models on every configuration, run the sweep on each model "
            "and put the runs side by side with rvbench compare.")
    return Table(columns, rows, note)
