"""Surviving the file system, part 3: a resumed store whose last row lost its newline, store lines with a
cell_id of the wrong type, dangling links and a full disk where a run directory is made, compare's page on
a full disk, and messages that name what is wrong (not an --out never given).

As in test_robustness.py: each failure ends with one line on stderr, its documented exit code, no
traceback, nothing lost and nothing left behind.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from report_fixture import write_run
from test_robustness import _fill, _tmpfs
from test_robustness_cli import ONE_CELL, _one_error_line, read_only_run  # noqa: F401 - a fixture

from bench.cli import main
from bench.errors import ExitCode, UsageError
from bench.results import load
from bench.results import rundir

# Its module-scoped fixture is a real run: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("robustness_dirs")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-cell run; each test works on its own copy."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", *ONE_CELL, "--out", str(out)]) == 0
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, instead of hanging the suite, a command that loops: SIGALRM after 120 s raises in it."""
    def expired(signum: int, frame: object) -> None:
        raise AssertionError("still running after 120 s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines()]


def test_resume_keeps_a_last_row_that_lost_only_its_newline(run_copy, capsys):
    jsonl = run_copy / "results.jsonl"
    before = jsonl.read_bytes()
    with open(jsonl, "r+b") as fh:  # truncate -s -1
        fh.truncate(len(before) - 1)
    assert main(["run", "--resume", str(run_copy)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert jsonl.read_bytes() == before  # the row kept, its newline back, the cell not run again
    assert len(pd.read_csv(run_copy / "results.csv")) == 1 and list(load(run_copy)["status"]) == ["ok"]


def test_resume_runs_a_torn_last_row_again(run_copy, capsys):
    jsonl = run_copy / "results.jsonl"
    (row,) = _rows(run_copy)
    with open(jsonl, "r+b") as fh:
        fh.truncate(len(jsonl.read_bytes()) - 20)  # the line no longer parses
    with pytest.warns(UserWarning, match=r"skipping line 1 \(not JSON: torn write\)"):
        assert main(["run", "--resume", str(run_copy)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    (again,) = _rows(run_copy)  # cut off and not counted as done, so measured again
    assert again["cell_id"] == row["cell_id"] and again["status"] == "ok" and again["started_at"] != row["started_at"]


def test_lines_with_a_cell_id_of_another_type_are_skipped_by_resume_report_and_compare(run_copy, capsys):
    bad = [{"cell_id": None}, {"cell_id": [1, 2]}, {"cell_id": 5}]
    with open(run_copy / "results.jsonl", "a") as fh:
        fh.write("".join(json.dumps(line) + "\n" for line in bad))
    with open(run_copy / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"cell_id": None, "samples_ms": [1.0]}) + "\n")
    jsonl, samples = run_copy / "results.jsonl", run_copy / "samples.jsonl"
    skipped = {f"{jsonl}: skipping line 2 ('cell_id' is null, not a string)",
               f"{jsonl}: skipping line 3 ('cell_id' is [1, 2], not a string)",
               f"{jsonl}: skipping line 4 ('cell_id' is 5, not a string)"}
    for argv, expected in ((["report", str(run_copy)], skipped),
                           (["compare", str(run_copy), str(run_copy)],
                            skipped | {f"{samples}: skipping line 2 ('cell_id' is null, not a string)"}),
                           (["run", "--resume", str(run_copy)], skipped)):
        with pytest.warns(UserWarning) as caught:
            assert main(argv) == 0, argv
        assert "Traceback" not in capsys.readouterr().err
        assert expected <= {str(w.message) for w in caught}, argv
    assert len(_rows(run_copy)) == 4 and list(load(run_copy)["status"]) == ["ok"]  # nothing lost, nothing run


@pytest.mark.parametrize("dangling", ["out", "out/runs"])
def test_a_dangling_link_where_the_run_directory_goes_is_one_line(tmp_path, capsys, deadline, dangling):
    out = tmp_path / "reports"
    if dangling == "out/runs":
        out.mkdir()
    link = tmp_path / dangling.replace("out", "reports")
    link.symlink_to(tmp_path / "gone")
    assert main(["run", *ONE_CELL, "--out", str(out)]) == ExitCode.USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert f"{link} is a link to {tmp_path / 'gone'}, which is not a directory" in line
    assert not (tmp_path / "gone").exists() and link.is_symlink()


def test_the_suffix_search_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "MAX_SUFFIX", 3)
    monkeypatch.setattr(rundir.time, "gmtime", lambda *_: (2026, 1, 1, 0, 0, 0, 3, 1, 0))
    made = [rundir.new_run_dir(tmp_path, "cpu") for _ in range(3)]
    with pytest.raises(UsageError, match="and its 2 suffixed names are all taken"):
        rundir.new_run_dir(tmp_path, "cpu")
    assert sorted((tmp_path / "runs").iterdir()) == sorted(made)


def test_compare_on_a_full_disk_names_the_page_and_leaves_none(tmp_path, capsys):
    small = {"archs": ("resnet50",), "impls": ("rv",), "batches": (8,), "precisions": ("fp32",), "failures": {}}
    a = write_run(tmp_path / "a", **small)
    with _tmpfs(tmp_path / "disk", "size=3m") as disk:
        b = write_run(disk / "b", seed=1, **small)
        _fill(disk, 0)
        assert main(["compare", str(a), str(b)]) == ExitCode.DISK_FULL
        line = _one_error_line(capsys.readouterr().err)
        assert f"disk full while writing {Path(b) / 'compare.html'}" in line
        assert not (Path(b) / "compare.html").exists() and not list(Path(b).glob(".*.tmp"))


@pytest.mark.parametrize("command", ["report", "compare"])
def test_a_missing_run_directory_is_named_without_suggesting_out(tmp_path, capsys, command):
    missing = tmp_path / "missing"
    assert main([command, str(missing)] + ([str(missing)] if command == "compare" else [])) == ExitCode.USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert f"{missing} is not a directory" in line and "--out" not in line
    assert list(tmp_path.iterdir()) == []


def test_compare_into_a_read_only_run_b_blames_its_page_not_out(read_only_run, capsys):  # noqa: F811
    assert main(["compare", str(read_only_run), str(read_only_run)]) == ExitCode.USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"rvbench compare: error: RUN_B's page {read_only_run / 'compare.html'} is not writable")
    assert "Read-only file system" in line and line.endswith("write it elsewhere with --out FILE")
