"""Surviving the file system and the scheduler, part 2: racing and read-only run directories,
profile edge cases, empty and bad values, and a second signal during the final report.

As in test_robustness.py: each failure ends with one line on stderr, its documented exit code, no
traceback, and every finished row kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from report_fixture import write_run
from test_robustness import REPO, TINY, _cell_ids, _damaged_store, _error_lines, _tmpfs

from bench.cli import main
from bench.config.sweep import build_spec
from bench.report import summary
from bench.results.rundir import new_run_dir

ONE_CELL = [*TINY, "--batch-sizes", "1"]  # the last --batch-sizes wins


def _one_error_line(err: str) -> str:
    """The single line the CLI printed on stderr (the progress bar aside); no traceback anywhere."""
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    return line


def test_runs_starting_in_the_same_second_get_distinct_directories(tmp_path, monkeypatch):
    frozen = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *_: frozen)
    n = 8
    barrier, made, errors = threading.Barrier(n), [], []

    def start() -> None:
        barrier.wait()
        try:
            made.append(new_run_dir(tmp_path, "cpu"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(made)) == n and all(d.is_dir() for d in made)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(d.name for d in made)


@pytest.fixture
def read_only_run(tmp_path: Path) -> Iterator[Path]:
    """A run directory (a valid config, a store with rows) on a tmpfs remounted read-only."""
    with _tmpfs(tmp_path / "ro", "size=1m") as mount:
        _damaged_store(mount)
        (mount / "config.json").write_text(
            json.dumps(build_spec("smoke", "cpu", {"models": ["resnet18"]}).to_json()))
        res = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {res.stderr.strip()}")
        yield mount


def test_report_on_a_read_only_run_needs_out(read_only_run, tmp_path, capsys):
    assert main(["report", str(read_only_run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "Read-only file system" in line and "--out FILE" in line
    page = tmp_path / "page.html"
    with pytest.warns(UserWarning):  # the damaged lines, skipped
        assert main(["report", str(read_only_run), "--out", str(page)]) == 0
    assert page.exists() and not (read_only_run / "index.html").exists()


def test_resume_on_a_read_only_run_is_one_line(read_only_run, capsys):
    assert main(["run", "--resume", str(read_only_run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write to {read_only_run} (Read-only file system)" in line


PROFILE = ["profile", "resnet18", "--impl", "rv", "--device", "cpu"]


def test_profile_out_of_memory_is_one_line_exit_1(tmp_path, capsys):
    """The largest cell allowed: its input alone is 13 PB, out of any machine's memory."""
    argv = [*PROFILE, "--batch-size", "65536", "--image-size", "4096", "--out", str(tmp_path / "p")]
    assert main(argv) == 1
    assert "out of memory at batch size 65536" in _one_error_line(capsys.readouterr().err)


def test_profile_with_a_bad_image_size_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*PROFILE, "--image-size", "3"]) == 2
    assert "resnet18 needs an image size >= 16 px, got 3" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


HUGE = "100000000000000000000"  # 1e20 written out: a whole number, past every bound


@pytest.mark.parametrize(("argv", "says"), [
    (["run", *TINY, "--batch-sizes", ","], "--batch-sizes is an empty list"),
    (["flops", "--models", ","], "--models is an empty list"),
    (["run", *TINY, "--out", ""], "--out is empty"),
    (["profile", "resnet18", "--out="], "--out is empty"),
    (["run", *TINY, "--cell-timeout", "inf"], "argument --cell-timeout: expected a finite number, got 'inf'"),
    (["run", *TINY, "--cell-timeout", "nan"], "argument --cell-timeout: expected a finite number, got 'nan'"),
    (["run", *TINY, "--cell-timeout", "1e300"], "argument --cell-timeout: expected at most 9223372036 seconds"),
    (["run", *TINY, "--batch-sizes", HUGE], f"batch size must be from 1 to 65536, got {HUGE}"),
    (["run", *TINY, "--image-size", "100000"], "image size 100000 px is over rvbench's limit of 4096 px"),
    (["scale", "resnet18", "--device", "cpu", "--timeout", "inf"], "argument --timeout: expected a finite number"),
    (["scale", "resnet18", "--device", "cpu", "--bucket-mb", "nan"], "argument --bucket-mb: expected a finite"),
    (["transfer", "resnet18", "--data", ".", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["transfer", "resnet18", "--data", ".", "--lr", "-1"], "argument --lr: expected a number > 0, got '-1'"),
    (["transfer", "resnet18", "--data", ".", "--budget-s", "inf"], "argument --budget-s: expected a finite"),
    (["transfer", "resnet18", "--data", ".", "--batch-size", HUGE], f"--batch-size must be from 1 to 65536, got {HUGE}"),
    (["compare", ".", ".", "--threshold", "nan"], "argument --threshold: expected a finite number, got 'nan'"),
    (["memory", "resnet18", "--gpu-mem", "9" * 40 + "TB"], "over the 16 EiB a 64-bit address space holds"),
    (["memory", "resnet18", "--batch-sizes", HUGE], "give whole numbers from 1 to 65536"),
    (["flops", "--models", "resnet18", "--image-size", "100000"], "image size 100000 px is over rvbench's limit"),
    (["profile", "resnet18", "--image-size", "100000"], "image size 100000 px is over rvbench's limit"),
], ids=["batch-sizes", "flops-models", "out-empty", "out-equals", "cell-timeout-inf", "cell-timeout-nan",
        "cell-timeout-1e300", "run-batch-1e20", "run-image-size", "scale-timeout-inf", "scale-bucket-nan",
        "transfer-lr-nan", "transfer-lr-negative", "transfer-budget-inf", "transfer-batch-1e20", "compare-threshold-nan",
        "memory-gpu-mem-huge", "memory-batch-1e20", "flops-image-size", "profile-image-size"])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, says):
    """Refused before any work, and before any directory is made."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert says in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_flops_image_size_0_is_the_default(capsys):
    assert main(["flops", "--models", "resnet18", "--impls", "rv", "--image-size", "0", "--json"]) == 0
    assert '"image_size": 224' in capsys.readouterr().out


def test_make_bench_gpu_cuda_is_cuda_0():
    res = subprocess.run(["make", "-n", "-s", "bench", "GPU=cuda", "PYTHON=python"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert "--device cuda:0" in res.stdout


def test_compare_writes_next_to_run_b(tmp_path, monkeypatch):
    small = {"archs": ("resnet50",), "impls": ("rv",), "batches": (8,), "precisions": ("fp32",), "failures": {}}
    a, b = write_run(tmp_path / "a", **small), write_run(tmp_path / "b", seed=1, **small)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(b)]) == 0
    assert (Path(b) / "compare.html").exists() and not (tmp_path / "compare.html").exists()


def test_a_second_signal_during_the_report_still_writes_it(tmp_path, capsys, monkeypatch):
    """SIGTERM stops the sweep at its second (hung) cell; a SIGINT while the report is written
    interrupts nothing: the report is written, the run ends with the resume line and SIGTERM's exit
    code, the first row kept."""
    monkeypatch.setenv("RVBENCH_FAULT", "hang:bs2")
    write_run_report = summary.write_run_report

    def interrupted_report(run_dir: Path, text: str) -> Path | None:
        os.kill(os.getpid(), signal.SIGINT)
        return write_run_report(run_dir, text)

    monkeypatch.setattr(summary, "write_run_report", interrupted_report)

    done = threading.Event()

    def terminate_after_first_row() -> None:
        while not done.is_set():
            if any(p.read_text() for p in tmp_path.glob("runs/*/results.jsonl")):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.1)

    threading.Thread(target=terminate_after_first_row, daemon=True).start()
    try:  # the cell timeout bounds the test should the signal never come
        assert main(["run", *TINY, "--out", str(tmp_path), "--cell-timeout", "120"]) == 128 + signal.SIGTERM
    finally:
        done.set()
    (run_dir,) = (tmp_path / "runs").iterdir()
    out, err = capsys.readouterr()
    assert _error_lines(err) == [] and "Traceback" not in out + err
    assert f"interrupted: 1 of 2 cells recorded; continue with: rvbench run --resume {run_dir}" in out
    assert len(_cell_ids(run_dir)) == 1 and (run_dir / "results.csv").exists() and (run_dir / "index.html").exists()
