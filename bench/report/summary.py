"""The run's closing summary: status counts, the sweep's overhead, the warning of a busy machine and
the best-config table, printed and kept as summary.txt.

The table is bench.results.analysis.summary_table, so it names the same best config per arch and
mode as the report's summary cards, marked tied by the same rule (TIE_RULE); the overhead line and the
warning (`contention_warning`) are the report header's too.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pandas as pd

from bench.columns import SWEEP_MODES
from bench.errors import is_disk_full
from bench.report import write_report
from bench.report.data import per_config
from bench.report.sections.backends import fastest_backends
from bench.report.text import format_table
from bench.results import write_atomically
from bench.results.analysis import TIE_RULE, TIED_MARK, contention_warning, ok_rows, plus_minus, summary_table

SUMMARY_NAME = "summary.txt"


def summary_counts(df: pd.DataFrame) -> str:
    """The rows per status, e.g. "3 ok, 1 oom" ("no cells" when there are none)."""
    return ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "no cells"


def overhead(df: pd.DataFrame) -> str:
    """The sweep's wall/timed ratio: the summed wall time of the cells that finished timing over the
    summed time of their timed loops (1.00: no time outside the timed loops), with both sums."""
    timed = df[pd.to_numeric(df["timed_s"], errors="coerce").notna()]
    timed_s = pd.to_numeric(timed["timed_s"]).sum()
    if not timed_s > 0:
        return "– (no cell finished timing)"
    wall_s = pd.to_numeric(timed["wall_s"], errors="coerce").sum()
    return f"{wall_s / timed_s:.2f} ({wall_s:.1f} s wall / {timed_s:.1f} s timed)"


def convergence(df: pd.DataFrame) -> str:
    """How well the run's medians are known: how many ok cells' timed loops met their target
    (`converged`) and the median of their `rel_ci`, e.g. "80 of 88 ok cells converged (91%) · median ±1.3%".
    Empty for a run without verdicts (the fixed rule, or one made before the adaptive rule)."""
    ok = ok_rows(df)
    verdicts = ok["converged"].dropna() if "converged" in ok.columns else pd.Series(dtype=object)
    if verdicts.empty:
        return ""
    converged = int(verdicts.astype(bool).sum())
    rel = plus_minus(pd.to_numeric(ok["rel_ci"], errors="coerce").median())
    spread = f" · median {rel}" if rel else ""
    return f"{converged} of {len(verdicts)} ok cells converged ({converged / len(verdicts):.0%}){spread}"


def summary_text(df: pd.DataFrame) -> str:
    """Status counts, overhead, the busy machine's warning if any, and the summary table as plain text
    (terminal and summary.txt), and what TIED_MARK means when a best config carries it."""
    counts = summary_counts(df)
    table = summary_table(df)
    if table.empty:
        return f"cells: {counts}\n(no ok cells)\n"
    tied = table["best config"].str.endswith(TIED_MARK).any()
    warning = contention_warning(df)
    sweep = df[df["mode"].isin(SWEEP_MODES)]
    fastest = fastest_backends(per_config(sweep), sweep)
    # arch, mode and best config read as text; the numbers after them line up right.
    converged = convergence(df)
    return (f"cells: {counts} · wall/timed {overhead(df)}" + (f" · {converged}" if converged else "") + "\n"
            + (f"{warning}\n" if warning else "")
            + f"{format_table(list(table.columns), table.itertuples(index=False), left=3)}\n"
            + (f"{TIED_MARK}: {TIE_RULE}\n" if tied else "")
            + "".join(f"fastest with output parity: {line}\n" for line in fastest))


def write_run_report(run_dir: Path, text: str) -> Path | None:
    """Write summary.txt, then the HTML report; return the report's path, None if it failed.

    A failing report must not cost the results, so its error is kept in summary.txt instead; a
    full disk propagates (both files are written atomically, so none is left torn).
    """
    summary = run_dir / SUMMARY_NAME
    write_atomically(summary, lambda p: p.write_text(text, encoding="utf-8"))
    try:
        return Path(write_report(run_dir))
    except Exception as exc:  # noqa: BLE001 - keep the run's outputs whatever the report does
        if is_disk_full(exc):
            raise
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write("\nHTML report failed:\n" + traceback.format_exc(limit=3))
        return None
