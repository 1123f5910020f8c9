"""Stage 10: every view of a run for people - the HTML report and comparison pages, the summary text.

`write_report` (bench.report.page) writes a run's index.html; bench.report.summary the closing
summary and summary.txt; bench.report.compare_page the views of `rvbench compare`;
bench.report.text the plain-text tables of every command. Importing the package is cheap: the
page's plotting (matplotlib) and FLOP counting (torch) load only when a page is written.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPORT_NAME", "write_report"]

REPORT_NAME = "index.html"  # the page's name in a run directory


def write_report(run_dir: str | Path, out: Path | None = None) -> Path:
    """Write the page of RUN_DIR's results to `out` (default RUN_DIR/index.html) and return its
    path (see bench.report.page)."""
    from bench.report.page import write_report as write_page

    return write_page(run_dir, out)
