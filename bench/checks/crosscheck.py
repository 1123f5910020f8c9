"""A run's cells timed again as timm's benchmark.py times them, set against the run's own figures.

timm's loop synchronises after every step and reports the mean of the host-clock step times
(`bench.measure.timing.timm_loop_ms`); rvbench keeps up to MAX_IN_FLIGHT steps queued, times each
on CUDA events and reports the median. The difference is what per-step synchronisation and the
mean cost: large at batch 1 (launch latency the GPU would otherwise hide), small at large batch.
Each of the run's ok cells (round 0, searches aside) is built afresh the way the run built it, and
its row of `crosscheck.csv` is written as soon as it is timed, so a stopped cross-check keeps what
it finished.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from bench.config.cell import Cell
from bench.results import ok_rows, write_atomically
from bench.results.analysis import config_of

CSV_NAME = "crosscheck.csv"
# The table's columns: the cell, the run's p50 and mean, timm's loop's mean and median, and
# timm's mean against our p50 (in %: positive when timm's loop reads slower).
FIELDS = ("arch", "impl", "mode", "precision", "compile", "backend", "batch_size", "step_ms_p50", "step_ms_mean",
          "timm_loop_ms_mean", "timm_loop_ms_p50", "timm_vs_p50_pct", "status")


def run_cells(df: pd.DataFrame) -> Iterator[tuple[Cell, dict]]:
    """A run's ok cells of round 0 (searches aside) with their rows, in the run's order."""
    df = ok_rows(df)
    for _, row in df[df["round"] == 0].iterrows():
        yield Cell(**config_of(row, impl=str(row["impl"]))), row.to_dict()


def crosscheck(run_dir: Path, df: pd.DataFrame, echo: Callable[[str], None] = print) -> list[dict]:
    """Time each cell of the run in `run_dir` (its rows `df`) with timm's loop; write
    RUN_DIR/crosscheck.csv after each."""
    from bench.execute.prepare import prepared_cell
    from bench.measure.timing import timm_loop_ms

    table: list[dict] = []
    for cell, row in run_cells(df):
        entry = {key: row[key] for key in FIELDS[:9]}
        try:
            with prepared_cell(cell) as built:
                times = timm_loop_ms(built.step, built.device)
        except Exception as exc:  # noqa: BLE001 - one cell that cannot run does not end the cross-check
            entry["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        else:
            mean = statistics.fmean(times)
            entry.update(timm_loop_ms_mean=mean, timm_loop_ms_p50=statistics.median(times),
                         timm_vs_p50_pct=100.0 * (mean / row["step_ms_p50"] - 1.0), status="ok")
        table.append(entry)
        echo(_line(cell, entry))
        write_atomically(run_dir / CSV_NAME, lambda p: _write_csv(p, table))
    return table


def _line(cell: Cell, entry: dict) -> str:
    if entry["status"] != "ok":
        return f"{cell.label()}: {entry['status']}"
    return (f"{cell.label()}: rvbench p50 {entry['step_ms_p50']:.3f} ms (mean {entry['step_ms_mean']:.3f}), "
            f"timm's loop mean {entry['timm_loop_ms_mean']:.3f} ms ({entry['timm_vs_p50_pct']:+.1f}%)")


def _write_csv(path: Path, table: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(table)

