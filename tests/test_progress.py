"""The sweep's progress: a bar on a terminal, one plain line per finished cell in a log."""

from __future__ import annotations

import io

from bench.config.cell import Cell
from bench.runner.progress import LineProgress, sweep_progress
from bench.runner.runner import Job
from bench.runner.schedule import Board

CELLS = [Cell("resnet50", impl, 64, 224, device="cpu") for impl in ("rv", "timm", "torchvision")]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _sweep(stream: io.StringIO) -> None:
    """Two slots' worth of what the scheduler tells the display: starts, then rows (one failed)."""
    progress = sweep_progress(total=4, done=1, stream=stream)  # one cell recorded before: a resumed run
    board = Board(progress, on_env=lambda name, env: None)
    for cell, status in zip(CELLS, ("ok", "oom", "ok")):
        board.show("cpu", Job(cell))
        row = {**cell.config(), "status": status, "wall_s": 5.24,
               "throughput": 123.44 if status == "ok" else float("nan"), "find_max_batch": False}
        board.done(row)
        board.show("cpu", None)
    progress.close()


def test_a_log_gets_one_plain_line_per_cell() -> None:
    log = io.StringIO()
    _sweep(log)
    text = log.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        f"[2/4] {CELLS[0].label()} ... ok 123.4 img/s 5.2 s",
        f"[3/4] {CELLS[1].label()} ... oom 5.2 s",
        f"[4/4] {CELLS[2].label()} ... ok 123.4 img/s 5.2 s",
    ]
    assert CELLS[0].label().startswith("resnet50 rv bs64")


def test_a_terminal_gets_the_bar() -> None:
    terminal = _Terminal()
    assert not isinstance(sweep_progress(total=4, done=1, stream=terminal), LineProgress)
    _sweep(terminal)
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue() and "[2/4]" not in terminal.getvalue()


def test_a_contended_cell_says_so_in_its_line() -> None:
    log = io.StringIO()
    progress = LineProgress(total=2, done=0, stream=log)
    for contended in (True, False):
        progress.cell_done({**CELLS[0].config(), "status": "ok", "wall_s": 5.24, "throughput": 123.44,
                            "contended": contended})
    assert log.getvalue().splitlines() == [f"[1/2] {CELLS[0].label()} ... ok 123.4 img/s 5.2 s contended",
                                           f"[2/2] {CELLS[0].label()} ... ok 123.4 img/s 5.2 s"]
