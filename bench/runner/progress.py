"""The sweep's progress (a `bench.runner.schedule.Progress`): a tqdm bar on a terminal, and one plain
line per finished cell anywhere else (CI logs, `make bench > log`), where a bar's carriage-return
frames would be noise."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from tqdm import tqdm

from bench.config.cell import config_label


class _Bar(tqdm):
    """tqdm's bar, advanced once per finished cell."""

    def cell_done(self, row: dict) -> None:
        """One more cell recorded."""
        self.update()


class LineProgress:
    """One line per finished cell: "[12/40] resnet50 rv bs64 ... ok 123.4 img/s 5.2 s", and "contended"
    after it when other processes were busy on the machine during the cell's timed loop."""

    def __init__(self, total: int, done: int, stream: TextIO) -> None:
        self._total, self._done, self._stream = total, done, stream

    def set_postfix_str(self, s: str) -> None:
        """The cell a slot starts: a log gets each cell once, when it ends, so nothing is written."""

    def cell_done(self, row: dict) -> None:
        """Write the finished cell's line: its count, label, status, throughput, seconds and contention."""
        self._done += 1
        label = config_label(row, sep=" ")
        outcome = [row.get("status") or "?"]
        if _number(row.get("throughput")):
            outcome.append(f"{row['throughput']:.1f} img/s")
        if _number(row.get("wall_s")):
            outcome.append(f"{row['wall_s']:.1f} s")
        if row.get("contended") is True:
            outcome.append("contended")
        prefix = "max batch of " if row.get("find_max_batch") else ""
        print(f"[{self._done}/{self._total}] {prefix}{label} ... {' '.join(outcome)}", file=self._stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is complete when written."""


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sweep_progress(total: int, done: int, stream: TextIO | None = None) -> _Bar | LineProgress:
    """The progress of a sweep over `total` jobs, `done` of them recorded before (a resumed run), on
    `stream` (default stderr, where tqdm writes): a bar with ETA on a terminal, else plain lines."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return _Bar(total=total, initial=done, unit="cell", dynamic_ncols=True, file=stream)
    return LineProgress(total, done, stream)
