"""Surviving the file system and the scheduler: full disks, SIGTERM, damaged stores and configs.

A full disk is real: a 3 MB tmpfs mounted for the test (skipped only where the mount is refused).
Each failure must end with one clear line on stderr, its documented exit code, no traceback, and
every finished row kept exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import ExitCode
from bench.results import (
    ResultWriter,
    finished_cell_ids,
    load,
    load_samples,
    update_latest,
)

REPO = Path(__file__).resolve().parent.parent
# Two one-second cells: the smallest sweep that has a finished row and one more.
TINY = ["--preset", "smoke", "--device", "cpu", "--rounds", "1", "--models", "resnet18", "--impls", "rv",
        "--batch-sizes", "1,2", "--image-size", "32"]


@contextlib.contextmanager
def _tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `mount` with `options`, unmounted afterwards whatever happens; the
    test is skipped, with the reason, only where the mount is refused."""
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs."""
    with _tmpfs(tmp_path / "disk", "size=3m") as mount:
        yield mount


def _fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until at most `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = max(stat.f_bavail * stat.f_frsize - leave, 0)
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * size)
            fh.flush()
        except OSError:
            pass
    return filler


def _rvbench(*args: str, fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RVBENCH_FAULT": fault}
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def _error_lines(stderr: str) -> list[str]:
    """stderr less the progress bar: the lines the CLI printed."""
    return [line for line in stderr.split("\n") if line.startswith("rvbench")]


def _cell_ids(run_dir: Path) -> list[str]:
    return [json.loads(line)["cell_id"] for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_writer_on_a_full_disk_leaves_no_torn_line(tiny_disk):
    writer = ResultWriter(tiny_disk)
    row = {"cell_id": "a", "message": "x" * 2000}
    writer.write(row, None)
    _fill(tiny_disk, 0)
    with pytest.raises(OSError) as err:
        for i in range(100):  # the first page fills up within two or three rows
            writer.write({**row, "cell_id": f"c{i}"}, None)
    writer.close()
    assert err.value.filename.endswith("results.jsonl")
    data = (tiny_disk / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())


def test_disk_full_mid_run_keeps_rows_and_resumes(tiny_disk):
    out = tiny_disk / "out"
    filler = _fill(tiny_disk, 20_000)
    code, stdout, stderr = _finish(_rvbench("run", *TINY, "--out", str(out)))
    assert code == ExitCode.DISK_FULL, stderr
    assert "Traceback" not in stdout + stderr
    (line,) = _error_lines(stderr)
    assert "disk full while writing" in line and "rvbench run --resume" in line
    run_dir = Path(line.rsplit("--resume ", 1)[1].rstrip("`"))
    kept = _cell_ids(run_dir)  # every line whole
    filler.unlink()
    code, stdout, stderr = _finish(_rvbench("run", "--resume", str(run_dir)))
    assert code == 0, stderr
    ids = _cell_ids(run_dir)
    assert len(ids) == len(set(ids)) == 2 and set(kept) <= set(ids)
    assert (run_dir / "index.html").exists() and len(load(run_dir)) == 2


@pytest.mark.parametrize("out", ["runs made before", "out missing", "--out .."])
def test_disk_full_at_start_is_exit_3_and_leaves_nothing(tiny_disk, capsys, monkeypatch, out):
    """Whatever the start made (OUT, OUT/runs, the run directory) goes again; a `runs` made before stays."""
    (tiny_disk / "sub").mkdir()
    if out == "runs made before":
        (tiny_disk / "out" / "runs").mkdir(parents=True)
    monkeypatch.chdir(tiny_disk / "sub")
    before = sorted(tiny_disk.rglob("*"))
    _fill(tiny_disk, 0)
    assert main(["run", *TINY, "--out", ".." if out == "--out .." else str(tiny_disk / "out")]) == ExitCode.DISK_FULL
    (line,) = capsys.readouterr().err.splitlines()
    assert "disk full while writing" in line and "config.json" in line and "run the command again" in line
    assert sorted(p for p in tiny_disk.rglob("*") if p.name != "filler") == before


@pytest.mark.parametrize("content", [
    b'{"preset": "smoke", "dev', b"[1, 2]", b"{}", b"\xff\xfe",
    json.dumps({"preset": "smoke", "device": "cpu", "rounds": "abc", "timing": {}, "sweeps": [{}]}).encode(),
    json.dumps({"preset": "smoke", "device": "cpu", "rounds": 1, "timing": {},
                "sweeps": [{"models": ["resnet18"], "batch_sizes": [1], "channels_last": 3}]}).encode(),
], ids=["truncated", "list", "empty", "not-utf8", "rounds-abc", "bad-axis"])
def test_resume_with_a_damaged_config_is_one_line(tmp_path, capsys, content):
    (tmp_path / "config.json").write_bytes(content)
    assert main(["run", "--resume", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "config.json" in line and not (tmp_path / "results.jsonl").exists()


def _damaged_store(run_dir: Path) -> None:
    good = {"cell_id": "a", "run_id": "r", "arch": "resnet18", "impl": "rv", "batch_size": 1, "image_size": 32,
            "precision": "fp32", "channels_last": False, "compile": "none", "mode": "inference", "device": "cpu",
            "round": 0, "find_max_batch": False, "status": "ok", "message": "", "throughput": 10.0,
            "step_ms_p50": 100.0}
    lines = [json.dumps(good), "42", "[1, 2]", "null", json.dumps({"arch": "resnet18"})]
    (run_dir / "results.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n" + b'{"cell_id": "b"')
    (run_dir / "samples.jsonl").write_text('{"cell_id": "a", "samples_ms": [1.0]}\n{"cell_id": "a"}\n')


def test_damaged_lines_are_skipped_with_their_number_and_cause(tmp_path):
    _damaged_store(tmp_path)
    with pytest.warns(UserWarning) as caught:
        assert finished_cell_ids(tmp_path) == {"a"}
    messages = [str(w.message) for w in caught]
    assert [m.split("skipping ")[1] for m in messages] == [
        "line 2 (not an object: 42)", "line 3 (not an object: [1, 2])", "line 4 (not an object: null)",
        "line 5 (no 'cell_id')", "line 6 (not UTF-8)",
        "line 7 (not JSON: torn write)"]
    with pytest.warns(UserWarning, match="line 2 .no 'samples_ms'"):
        assert load_samples(tmp_path) == {"a": [1.0]}


def test_corrupt_parquet_falls_back_to_the_jsonl(tmp_path):
    _damaged_store(tmp_path)
    (tmp_path / "results.parquet").write_bytes(b"PAR1 not really")
    with pytest.warns(UserWarning) as caught:
        assert list(load(tmp_path)["cell_id"]) == ["a"]
    assert "results.parquet unreadable" in str(caught[0].message)


def test_report_on_a_damaged_store_does_not_traceback(tmp_path):
    _damaged_store(tmp_path)
    code, stdout, stderr = _finish(_rvbench("report", str(tmp_path)))
    assert code == 0 and "Traceback" not in stdout + stderr, stderr
    assert "line 7 (not JSON: torn write)" in stderr


def test_latest_that_is_a_real_directory_is_left_alone(tmp_path):
    (tmp_path / "latest").mkdir()
    (tmp_path / "runs" / "r").mkdir(parents=True)
    with pytest.warns(UserWarning, match="real directory"):
        update_latest(tmp_path, tmp_path / "runs" / "r")
    assert (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root may write anywhere else)."""
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        yield mount


@pytest.mark.parametrize("command", ["compare", "profile"])
@pytest.mark.parametrize("where", ["read-only", "a file or folder in the way", "missing parent"])
def test_bad_out_fails_before_any_work(read_only_disk, tmp_path, capsys, command, where):
    (tmp_path / "a-file").touch()
    (tmp_path / "results.jsonl").touch()  # compare's RUN_A and RUN_B: run directories, checked first
    out = {"read-only": read_only_disk / "out",
           "a file or folder in the way": tmp_path / ("a-file" if command == "profile" else "ro"),
           "missing parent": tmp_path / "no" / "out.html"}[where]
    if command == "profile" and where == "missing parent":
        out = read_only_disk / "no" / "out"  # profile makes missing folders, where it can
    argv = (["compare", str(tmp_path), str(tmp_path)] if command == "compare"
            else ["profile", "resnet18", "--impl", "rv", "--batch-size", "1", "--device", "cpu"])
    assert main([*argv, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"rvbench {command}: error: --out {out}" in line


def test_report_on_a_full_disk_is_one_line_and_leaves_no_torn_page(tiny_disk, capsys):
    _damaged_store(tiny_disk)
    _fill(tiny_disk, 0)
    with pytest.warns(UserWarning):
        assert main(["report", str(tiny_disk)]) == ExitCode.DISK_FULL
    (line,) = capsys.readouterr().err.splitlines()
    assert f"disk full while writing {tiny_disk / 'index.html'}" in line
    assert not (tiny_disk / "index.html").exists() and not list(tiny_disk.glob(".*.tmp"))
