"""The rows of `rvbench transfer` in a run's results, and the one summary of its runs that every view shows.

A transfer run writes one row per epoch (record "epoch") and then one for the run (record "run"); see the
"transfer" columns of bench.columns.
"""

from __future__ import annotations

import pandas as pd

from bench.columns import TRANSFER_MODE

RUN_KEYS = ["arch", "impl", "strategy", "weights", "precision", "batch_size", "image_size", "seed"]


def transfer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows written by `rvbench transfer`."""
    return df[df["mode"] == TRANSFER_MODE]


def epoch_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch rows of the transfer runs, numeric columns as numbers, in run and epoch order."""
    epochs = transfer_rows(df)
    epochs = epochs[epochs["record"] == "epoch"].copy()
    for column in ("epoch", "val_top1", "train_loss", "time_s", "epoch_s", "images_per_s"):
        epochs[column] = pd.to_numeric(epochs[column], errors="coerce")
    return epochs.sort_values([*RUN_KEYS, "epoch"], kind="stable")


def run_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per transfer run: RUN_KEYS, status, epochs, final and best validation top-1 (%), target (%), time
    to target (s; None: not reached), total time (s), median training images/s, and the run's message."""
    rows = transfer_rows(df)
    epochs = epoch_rows(df)
    out = []
    for _, run in rows[rows["record"] == "run"].iterrows():
        mine = epochs[(epochs[RUN_KEYS] == run[RUN_KEYS]).all(axis=1)]
        reached = pd.to_numeric(pd.Series([run["time_to_target_s"]]), errors="coerce").iloc[0]
        out.append({
            **{k: run[k] for k in RUN_KEYS}, "status": run["status"], "epochs": len(mine),
            "final top-1 %": 100 * float(run["val_top1"]) if pd.notna(run["val_top1"]) else None,
            "best top-1 %": 100 * mine["val_top1"].max() if len(mine) else None,
            "target %": 100 * float(run["target_acc"]),
            "time to target s": None if pd.isna(reached) else float(reached),
            "total s": float(run["time_s"]) if pd.notna(run["time_s"]) else None,
            "img/s": mine["images_per_s"].median() if len(mine) else None,
            "message": run["message"],
        })
    return pd.DataFrame(out, columns=[*RUN_KEYS, "status", "epochs", "final top-1 %", "best top-1 %", "target %",
                                      "time to target s", "total s", "img/s", "message"])
