"""Every exit code of README's table (bench.errors.ExitCode) against a real case: a real regression,
bad input, a real full tmpfs, a report that fails, a run that measures nothing, and real SIGINTs
and SIGTERMs sent to `rvbench run` processes.

Each failure ends with its code, at most one line on stderr (the progress lines aside), no
traceback, and every finished row kept. The signalled runs share one module fixture: they run at
once, each stopped at its second (hung) cell.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from report_fixture import write_run
from test_robustness import TINY, _cell_ids, _error_lines, _fill, _finish, _rvbench, _tmpfs
from test_robustness_cli import ONE_CELL, _one_error_line

from bench.cli import main
from bench.errors import ExitCode
from bench.report.sections import perf as plots_perf

SMALL = {"archs": ("resnet50",), "impls": ("rv",), "batches": (8,), "precisions": ("fp32",), "failures": {}}
SLOW_KEY = ("resnet50", "rv", 8, "fp32")


def test_every_code_of_the_table_has_a_case_here():
    cases = {int(m[1]) for name in globals() if (m := re.match(r"test_exit_(\d+)_", name))}
    assert cases == {int(code) for code in ExitCode}


def test_exit_0_done(tmp_path, capsys):
    a = write_run(tmp_path / "a", **SMALL)
    assert main(["compare", str(a), str(a), "--fail-on-regression", "10"]) == ExitCode.OK
    assert capsys.readouterr().err == ""


def test_exit_1_a_regression_trips_compare(tmp_path, capsys):
    a = write_run(tmp_path / "a", **SMALL)
    slow = write_run(tmp_path / "slow", seed=2, slow={SLOW_KEY: 1.5}, **SMALL)
    assert main(["compare", str(a), str(slow), "--fail-on-regression", "10"]) == ExitCode.FAILED
    out, err = capsys.readouterr()
    assert "regressed" in out and "Traceback" not in out + err


def test_exit_2_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "--cell-timeout", "inf"]) == ExitCode.USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("rvbench run: error: argument --cell-timeout: expected a finite number, got 'inf'")
    assert list(tmp_path.iterdir()) == []


def test_exit_3_disk_full_is_one_line_naming_the_file(tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "size=3m") as disk:
        run = write_run(disk / "run", **SMALL)
        rows = _cell_ids(run)
        _fill(disk, 0)
        assert main(["report", str(run)]) == ExitCode.DISK_FULL
        line = _one_error_line(capsys.readouterr().err)
        assert f"disk full while writing {run / 'index.html'}" in line
        assert _cell_ids(run) == rows  # every row kept


def test_exit_4_a_report_bug_keeps_the_data(tmp_path, capsys, monkeypatch):
    def broken_plot(configs: object) -> None:
        raise RuntimeError("a bug in a plot")

    monkeypatch.setattr(plots_perf, "throughput", broken_plot)
    assert main(["run", *ONE_CELL, "--out", str(tmp_path)]) == ExitCode.REPORT_FAILED
    out, err = capsys.readouterr()
    assert "HTML report failed" in _one_error_line(err) and "Traceback" not in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(_cell_ids(run_dir)) == 1 and (run_dir / "results.csv").exists()
    assert "a bug in a plot" in (run_dir / "summary.txt").read_text()
    assert not (run_dir / "index.html").exists()


def test_exit_5_a_run_that_measures_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RVBENCH_FAULT", "oom:resnet18")  # the worker inherits it
    assert main(["run", *ONE_CELL, "--out", str(tmp_path)]) == ExitCode.NOTHING_MEASURED
    assert "no cell was measured (1 oom)" in _one_error_line(capsys.readouterr().err)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(_cell_ids(run_dir)) == 1 and (run_dir / "index.html").exists()


# Each signalled run: the signals sent once its first row is written, each after its delay in
# seconds. A second signal comes while the first one's wrap-up runs: the workers being killed,
# their threads joined, the tables and the report written (a second Ctrl-C about 0.5 s after the
# first once aborted the interpreter's shutdown: "Fatal Python error", exit 134, no index.html).
SIGNALLED = {
    "sigterm": [(signal.SIGTERM, 0.0)],
    "sigint-sigint-0.05s": [(signal.SIGINT, 0.0), (signal.SIGINT, 0.05)],
    "sigint-sigint-0.5s": [(signal.SIGINT, 0.0), (signal.SIGINT, 0.5)],
    "sigterm-sigint-1.5s": [(signal.SIGTERM, 0.0), (signal.SIGINT, 1.5)],
}


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (the run's workers), from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _signalled_run(out: Path, signals: list[tuple[int, float]]) -> dict:
    """Start `rvbench run` (its second cell hangs), send `signals` once its first row is written;
    returns its exit code, outputs, run directory and the workers it had when signalled."""
    proc = _rvbench("run", *TINY, "--out", str(out), fault="hang:bs2")
    deadline = time.monotonic() + 240
    while not any(p.read_text() for p in out.glob("runs/*/results.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = _children(proc.pid)
    for signum, delay in signals:
        time.sleep(delay)
        proc.send_signal(signum)
    code, stdout, stderr = _finish(proc)
    (run_dir,) = (out / "runs").iterdir()
    return {"code": code, "stdout": stdout, "stderr": stderr, "run_dir": run_dir, "workers": workers}


@pytest.fixture(scope="module")
def signalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every run of SIGNALLED, started together, by name."""
    base = tmp_path_factory.mktemp("signalled")
    results: dict[str, dict] = {}

    def one(name: str) -> None:
        try:
            results[name] = _signalled_run(base / name, SIGNALLED[name])
        except BaseException as exc:  # noqa: BLE001 - reported by the test of that run
            results[name] = {"error": exc}

    threads = [threading.Thread(target=one, args=(name,)) for name in SIGNALLED]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    yield results


def _check_signalled(run: dict, code: ExitCode) -> None:
    if "error" in run:
        raise run["error"]
    assert run["code"] == code, run["stderr"]
    assert "Traceback" not in run["stdout"] + run["stderr"] and "Fatal Python error" not in run["stderr"]
    assert _error_lines(run["stderr"]) == []  # the resume line is on stdout, with the summary
    run_dir = run["run_dir"]
    assert f"continue with: rvbench run --resume {run_dir}" in run["stdout"]
    assert len(_cell_ids(run_dir)) == 1  # the first row, once; none for the hung cell
    assert (run_dir / "results.csv").exists() and (run_dir / "index.html").exists()
    assert run["workers"] and not any(Path(f"/proc/{pid}").exists() for pid in run["workers"])


@pytest.mark.parametrize("name", [n for n in SIGNALLED if SIGNALLED[n][0][0] == signal.SIGINT])
def test_exit_130_ctrl_c_even_twice(signalled, name):
    _check_signalled(signalled[name], ExitCode.INTERRUPTED)


@pytest.mark.parametrize("name", [n for n in SIGNALLED if SIGNALLED[n][0][0] == signal.SIGTERM])
def test_exit_143_sigterm_stops_like_ctrl_c(signalled, name):
    _check_signalled(signalled[name], ExitCode.TERMINATED)


def test_a_signal_after_a_stop_does_not_kill_the_ending_process():
    """The first signal sets the exit code; one that comes after the command's wrap-up (its handlers
    gone) must not end the process some other way (an uncaught KeyboardInterrupt: killed by SIGINT)."""
    import os

    from bench.commands.stopping import signals_interrupt

    with signals_interrupt() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # noted: nothing was being measured
    os.kill(os.getpid(), signal.SIGINT)  # Python's own handler would raise KeyboardInterrupt here
    assert stop.exit_code() == ExitCode.TERMINATED
