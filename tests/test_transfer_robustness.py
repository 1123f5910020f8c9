"""`rvbench transfer` under hostile conditions: unreadable data, a diverging loss, SIGINT and SIGTERM.

Each case is a real one: folders of mode 000 read without root's permission override, a learning rate that
overflows the loss, signals sent to a running process. Each must end with its exit code, one line on stderr,
no traceback, and every row written kept. Not in the "transfer" xdist group: these need none of its costly
fixtures, so they may run on the other worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.data.procedural import write_demo_data
from bench.results import load
from test_transfer import ARCH, ROOT, _exit, _write_images


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR directory of 40 training and 20 validation images: a few steps per epoch."""
    return write_demo_data(tmp_path_factory.mktemp("small"), n_train=40, n_test=20, seed=0)[1]


def _rvbench(argv: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """`rvbench transfer ARCH --device cpu ARGV` as a real process, run under `prefix` (a command such as setpriv)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "bench", "transfer", ARCH, "--device", "cpu", *argv],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _unprivileged() -> tuple[str, ...]:
    """The command prefix under which permission bits hold: none for a user; for root, setpriv dropping the two
    capabilities that let root read any directory (it stays root, so it still reaches pytest's own tmp_path)."""
    if os.geteuid() != 0:
        return ()
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    try:
        subprocess.run([*prefix, "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot drop root's permission override with setpriv: {exc}")
    return prefix


def test_unreadable_data_or_class_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    """A --data directory or a class folder the user may not list (mode 000): one line naming it, exit 2,
    nothing written. Both cases run at once, as real processes without root's override of permissions."""
    prefix = _unprivileged()
    data, closed = tmp_path / "data", tmp_path / "closed"
    _write_images(data, {"cat": 2, "dog": 2})
    _write_images(closed, {"cat": 2, "dog": 2})
    (data / "dog").chmod(0)
    closed.chmod(0)
    try:
        procs = {where: _rvbench(["--data", str(path), "--out", str(tmp_path / "reports")], prefix)
                 for where, path in ((data / "dog", data), (closed, closed))}
        for where, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 2 and "Traceback" not in err, err
            assert err == f"rvbench transfer: error: --data: cannot read {where} (Permission denied)\n"
    finally:
        (data / "dog").chmod(0o755)
        closed.chmod(0o755)
    assert not (tmp_path / "reports").exists()


def test_a_diverging_loss_is_an_error_row_and_the_other_runs_go_on(small: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """--lr 1e30 overflows the loss to nan within the first epoch: each run ends as an error row saying
    "diverged" and where, the next implementation still trains, and with no run finished the command exits 5."""
    code, err = _exit(["--data", str(small), "--out", str(tmp_path), "--lr", "1e30", "--impls", "rv,timm",
                       "--strategy", "scratch", "--epochs", "2", "--image-size", "32", "--batch-size", "8"], capsys)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 5 and "Traceback" not in err, err
    assert err == (f"rvbench transfer: error: no run finished (2 error; each run's message above and in the "
                   f"report); rows in {run_dir}\n")
    df = load(run_dir)
    runs = df[df["record"] == "run"]
    assert list(runs["impl"]) == ["rv", "timm"] and set(runs["status"]) == {"error"}
    for message in runs["message"]:
        assert message.startswith("diverged: the training loss became nan at epoch 1, step "), message
    assert (df["record"] == "epoch").sum() == 0  # the epoch that diverged records no accuracy
    assert (run_dir / "results.csv").exists() and (run_dir / "index.html").exists()
    assert not [t for t in threading.enumerate() if t.name == "bench-sampler"]  # the epoch's RSS sampler stopped


def _kept(run_dir: Path, out: Path) -> None:
    """Every row of the jsonl is in the table, the csv and the report, and `latest` points at the run."""
    rows = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(rows) >= 1 and len(load(run_dir)) == len(rows)
    assert len((run_dir / "results.csv").read_text().splitlines()) == 1 + len(rows)
    assert (run_dir / "index.html").exists() and (out / "latest").resolve() == run_dir.resolve()


def _first_row(out: Path, alive: Callable[[], bool]) -> None:
    """Wait until a row of the run under `out` is written, while `alive()`."""
    deadline = time.monotonic() + 240
    while not any(p.read_text() for p in out.glob("runs/*/results.jsonl")):
        assert alive() and time.monotonic() < deadline
        time.sleep(0.2)


TRAIN_ON = ["--strategy", "scratch", "--epochs", "1000", "--image-size", "32", "--batch-size", "8"]


def test_ctrl_c_keeps_the_rows_and_names_the_run_directory(small: Path, tmp_path: Path) -> None:
    """SIGINT to the process mid-run, as Ctrl-C sends it: the tables and report are written from the rows so far,
    exit 130, and the one stderr line names the run directory."""
    proc = _rvbench(["--data", str(small), "--out", str(tmp_path), *TRAIN_ON])
    try:
        _first_row(tmp_path, lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert err == f"rvbench transfer: interrupted; the finished epochs and runs are kept in {run_dir}\n"
    _kept(run_dir, tmp_path)


def test_sigterm_stops_like_ctrl_c(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SIGTERM (a scheduler's stop) mid-run, sent to this process while `main` trains (cheaper than a second
    process): as Ctrl-C, with exit 143."""
    done = threading.Event()

    def terminate_after_first_row() -> None:
        _first_row(tmp_path, lambda: not done.is_set())
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=terminate_after_first_row, daemon=True)
    thread.start()
    try:
        code, err = _exit(["--data", str(small), "--out", str(tmp_path), *TRAIN_ON], capsys)
    finally:
        done.set()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err == f"rvbench transfer: interrupted; the finished epochs and runs are kept in {run_dir}\n"
    _kept(run_dir, tmp_path)
    assert not [t for t in threading.enumerate() if t.name == "bench-sampler"]  # the cut epoch's sampler stopped
