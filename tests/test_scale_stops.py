"""`rvbench scale` stopped from outside, on the CPU with real torchrun and gloo: SIGTERM (a scheduler,
`timeout`), a second signal while it stops, a full disk, a rendezvous that never completes.

Each ends with its exit code, one line on stderr and no traceback, the rows measured before it
kept, and no torchrun or rank left running (they run in sessions of their own, which no signal to
rvbench reaches: rvbench must end them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_robustness import _fill, _tmpfs
from test_scale import ARGS, REPO, _assert_nothing_left, _rows

from bench.errors import ExitCode
from bench.runner.endpoint import free_port
from bench.runner.scale import rendezvous_timeout

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("scale_stops")

RDZV_JOB_TIMEOUT_S = 48.0  # the rendezvous gives up after a quarter of it


def _scale(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "scale", *ARGS, *args, "--out", str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(what: Callable[[], object], proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not what():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


def _finish(proc: subprocess.Popen, out: Path) -> tuple[int, str, str, Path]:
    stdout, stderr = proc.communicate(timeout=300)
    (run_dir,) = (out / "runs").iterdir()
    return proc.returncode, stdout, stderr, run_dir


def _jsonl_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stops(tmp_path_factory) -> dict[str, tuple[int, str, str, Path]]:
    """Three runs: SIGTERM while world size 2 runs (world size 1 measured); SIGTERM, then Ctrl-C
    0.3 s later while it stops; two nodes asked for and one started, alongside the others (it
    only waits)."""
    base = tmp_path_factory.mktemp("stops")
    waiting = _scale(base / "rendezvous", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint",
                     f"127.0.0.1:{free_port()}", "--timeout", f"{RDZV_JOB_TIMEOUT_S:g}")
    runs = {}
    for name, nproc, second in (("sigterm", "1,2", None), ("twice", "2", signal.SIGINT)):
        out = base / name
        proc = _scale(out, "--nproc", nproc, "--steps", "50")  # world size 2 outlasts the signal
        _wait_for(lambda: list(out.glob("runs/*/scale/rv-ws2/rank*.json")), proc)  # its ranks run
        proc.send_signal(signal.SIGTERM)
        if second is not None:
            time.sleep(0.3)
            proc.send_signal(second)
        runs[name] = _finish(proc, out)
    runs["rendezvous"] = _finish(waiting, base / "rendezvous")
    return runs


def test_sigterm_stops_every_rank_keeps_what_was_measured_and_exits_143(stops):
    code, stdout, stderr, run_dir = stops["sigterm"]
    assert code == ExitCode.TERMINATED, stderr
    assert "Traceback" not in stdout + stderr
    assert stderr.splitlines() == [
        f"rvbench scale: terminated: the job running was stopped; 1 row(s) kept in {run_dir}"]
    rows = _rows(run_dir)
    assert list(rows) == [1] and rows[1]["status"] == "ok"  # world size 1; the stopped job has no row
    assert (run_dir / "results.csv").exists() and (run_dir / "index.html").exists()
    assert (run_dir.parent.parent / "latest").resolve() == run_dir.resolve()
    _assert_nothing_left(run_dir)


def test_a_second_signal_while_stopping_still_ends_every_rank(stops):
    code, stdout, stderr, run_dir = stops["twice"]
    assert code == ExitCode.TERMINATED, stderr  # the first signal's code
    assert "Traceback" not in stdout + stderr
    (line,) = stderr.splitlines()
    assert line.startswith("rvbench scale: ") and str(run_dir) in line
    assert _jsonl_rows(run_dir) == []  # nothing was measured, nothing made up
    _assert_nothing_left(run_dir)


def test_a_rendezvous_that_never_completes_says_so_and_gives_up_before_the_timeout(stops):
    code, stdout, stderr, run_dir = stops["rendezvous"]
    assert code == ExitCode.NOTHING_MEASURED, stderr
    assert "Traceback" not in stdout + stderr
    assert "waiting for every node at the rendezvous 127.0.0.1:" in stdout
    (row,) = _jsonl_rows(run_dir)
    rdzv_s = rendezvous_timeout(RDZV_JOB_TIMEOUT_S)
    assert rdzv_s < RDZV_JOB_TIMEOUT_S
    assert row["status"] == "error"  # torchrun gave up on its own, not killed at --timeout ("timeout")
    assert row["message"].startswith(f"world size 2: torchrun exited with code 1 before any rank started (the nodes "
                                     f"have {rdzv_s} s to meet at the rendezvous")
    _assert_nothing_left(run_dir)


def test_disk_full_mid_scale_keeps_the_rows_and_exits_3(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=8m") as disk:
        out = disk / "out"
        proc = _scale(out, "--nproc", "1,2")
        _wait_for(lambda: any(p.stat().st_size for p in out.glob("runs/*/results.jsonl")), proc)
        _fill(disk, 0)  # world size 2's files, its ranks' records, the tables: whichever comes first fails
        code, stdout, stderr, run_dir = _finish(proc, out)
        assert code == ExitCode.DISK_FULL, stderr
        assert "Traceback" not in stdout + stderr
        (line,) = stderr.splitlines()
        assert line.startswith(f"rvbench scale: error: disk full while writing {run_dir}")
        assert line.endswith("free space and run the command again")
        rows = _jsonl_rows(run_dir)
        assert rows[0]["world_size"] == 1 and rows[0]["status"] == "ok"  # kept
        _assert_nothing_left(run_dir)
