"""`rvbench gpu-validate`'s guard, parts, budgets and files, on the CPU with fake children.

The fakes stand in for what needs a GPU (gpu-check's checks, a CUDA sweep): small Python scripts
that print gpu-check's real lines (`CheckResult.line`), sleep past their budget, or hang ignoring
SIGTERM. The guard, the recording, the files and the archive are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.checks import gpu, guard, rules, validate
from bench.checks.guard import PartResult, run_checks, run_part
from bench.checks.validate import PARTS, TOTAL_S, Part, Validation
from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
needs_no_cuda = pytest.mark.skipif(gpu.torch.cuda.is_available(), reason="tests the no-CUDA path")

# A fake `gpu-check --only NAMES`: gpu-check's header, then each check's real line; "slow" sleeps
# past any budget, "crash" kills the process, "stubborn" ignores SIGTERM and sleeps.
FAKE_GPU_CHECK = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {root!r})
    from bench.checks.rules import CheckResult  # torch-free: the fake starts in a blink
    names = sys.argv[1].split(",")
    print("gpu-check on cuda:0 (Fake GPU): %d checks" % len(names), flush=True)
    for number, name in enumerate(names, 1):
        if name == "slow":
            time.sleep(600)
        if name == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)
        if name == "crash":
            sys.exit(7)
        print("a library's own line, not a verdict", flush=True)
        print(CheckResult(name, True, "fine (really)", seconds=0.2).line(number), flush=True)
""")


def fake_check_argv(tmp_path: Path):
    script = tmp_path / "fake_gpu_check.py"
    script.write_text(FAKE_GPU_CHECK.format(root=str(ROOT)))
    calls = []

    def argv(names: list[str], attempt: int) -> list[str]:
        calls.append((list(names), attempt))
        return [sys.executable, str(script), ",".join(names)]

    return argv, calls


def test_an_overrunning_check_is_skipped_and_recorded_and_the_next_ones_run(tmp_path):
    argv, calls = fake_check_argv(tmp_path)
    budgets = {"first": 5.0, "slow": 1.0, "third": 5.0, "crash": 5.0, "last": 5.0}
    result = run_checks(PartResult("gpu-check", 200.0), budgets, argv, tmp_path / "log", float("inf"), lambda _: None)
    verdicts = [(c["name"], c["verdict"]) for c in result.checks]
    assert verdicts == [("first", "PASS"), ("slow", "SKIPPED"), ("third", "PASS"), ("crash", "FAIL"), ("last", "PASS")]
    slow, crash = result.checks[1], result.checks[3]
    assert slow["figure"] == "skipped: budget (over its 1 s budget)" and slow["seconds"] >= 1.0
    assert crash["figure"] == "its process exited with 7 during this check"
    # A fresh child after each stop, with the checks after the one it lost.
    assert calls == [(list(budgets), 1), (["third", "crash", "last"], 2), (["last"], 3)]
    assert result.status == "skipped: budget"
    assert result.checks[0]["figure"] == "fine (really)" and result.checks[0]["seconds"] == 0.0


def test_a_gpu_check_that_never_starts_fails_its_checks_once(tmp_path):
    calls = []

    def argv(names: list[str], attempt: int) -> list[str]:
        calls.append(attempt)
        return [sys.executable, "-c", "import sys; print('no header', flush=True); sys.exit(3)"]

    result = run_checks(PartResult("gpu-check", 200.0), {"a": 5.0, "b": 5.0}, argv, tmp_path / "log",
                        float("inf"), lambda _: None)
    assert [(c["name"], c["verdict"]) for c in result.checks] == [("a", "FAIL"), ("b", "FAIL")]
    assert result.checks[0]["figure"] == "gpu-check did not start (exit code 3; its log says why)"
    assert calls == [1] and result.status == "failed"


def test_a_stopped_guard_stops_its_child(tmp_path):
    """gpu-validate stopped by a signal (KeyboardInterrupt in the guard) leaves no part running."""
    argv = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"]
    pids = []

    def echo(line: str) -> None:
        pids.append(int(line))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_part(PartResult("gpu-smoke", 60.0), argv, tmp_path / "log", float("inf"), echo)
    assert not Path(f"/proc/{pids[0]}").exists() or "Z" in Path(f"/proc/{pids[0]}/stat").read_text().split()[2]


def test_signals_held_delivers_after_the_block_though_other_threads_run():
    """A mask would only hold the signal for the thread that set it; swapped handlers hold it for all."""
    import signal
    import threading

    from bench.runner.scale import signals_held

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            sender.start()
            sender.join()
            sum(range(100_000))  # the interpreter has run pending handlers by now
            assert got == []
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_check_ignoring_sigterm_is_killed(tmp_path):
    argv, _ = fake_check_argv(tmp_path)
    result = run_checks(PartResult("gpu-check", 200.0), {"stubborn": 1.0, "after": 5.0}, argv, tmp_path / "log",
                        float("inf"), lambda _: None)
    assert [(c["name"], c["verdict"]) for c in result.checks] == [("stubborn", "SKIPPED"), ("after", "PASS")]


def test_checks_left_when_the_part_runs_out_are_skipped_with_zero_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "START_S", 3.0)  # the fake starts in well under that
    argv, calls = fake_check_argv(tmp_path)
    budgets = {"slow": 1000.0, "never": 5.0}
    part = PartResult("gpu-check", guard.START_S + 2.0)  # the part's end cuts the slow check short
    result = run_checks(part, budgets, argv, tmp_path / "log", float("inf"), lambda _: None)
    assert [(c["name"], c["verdict"], c["seconds"]) for c in result.checks][1] == ("never", "SKIPPED", 0.0)
    assert result.checks[0]["verdict"] == "SKIPPED" and len(calls) == 1


def test_a_hanging_part_is_stopped_at_its_budget(tmp_path):
    argv = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"]
    lines = []
    result = run_part(PartResult("gpu-smoke", guard.GRACE_S + 1.0), argv, tmp_path / "log", float("inf"), lines.append)
    assert result.status == "skipped: budget" and result.exit_code == -15
    assert lines == ["started"] and result.seconds >= guard.GRACE_S + 1.0


def test_part_with_no_time_left_is_skipped_unstarted(tmp_path):
    marker = tmp_path / "ran"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    result = run_part(PartResult("crosscheck", 60.0), argv, tmp_path / "log", 0.0, print)
    assert result.status == "skipped: budget" and not marker.exists()


def fake_parts(tmp_path: Path, work: Path) -> dict:
    """gpu-check's fake; a smoke 'run' that makes a run directory with a large trace; a hanging cross-check."""
    check_argv, _ = fake_check_argv(tmp_path)
    smoke = textwrap.dedent(f"""
        import os, pathlib
        run = pathlib.Path({str(work)!r}) / "runs" / "20261203T000000Z-host-cuda0"
        (run / "profiles" / "resnet50-rv").mkdir(parents=True)
        (run / "config.json").write_text("{{}}")
        (run / "results.jsonl").write_text('{{"status": "ok"}}\\n')
        (run / "profiles" / "resnet50-rv" / "trace.pt.trace.json").write_bytes(os.urandom(300_000))
        (run / "worker-cuda0.log").write_bytes(os.urandom(150_000))
        (run / "results.csv").write_bytes(os.urandom(60_000))  # kept, however large: it says what ran
        print("smoke: 18 of 18 cells ok", flush=True)
    """)
    return {"gpu-check": check_argv,
            "gpu-smoke": lambda: [sys.executable, "-c", smoke],
            "crosscheck": lambda: [sys.executable, "-c", "import time; time.sleep(600)"]}


def test_validation_writes_its_three_files_even_when_a_part_hangs(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    monkeypatch.setattr(validate, "MAX_FILE_BYTES", 200_000)  # the random trace does not fit
    parts = (Part("gpu-check", guard.START_S + 10, "checks"), Part("gpu-smoke", 30, "smoke"),
             Part("crosscheck", guard.GRACE_S + 1, "timm loop"))
    validation = Validation("cuda:0", work, out, echo=lambda _: None, budgets={"device": 5.0, "slow": 1.0})
    results = validation.run(parts, fake_parts(tmp_path, work))
    assert [(r.name, r.status) for r in results] == [
        ("gpu-check", "skipped: budget"), ("gpu-smoke", "ok"), ("crosscheck", "skipped: budget")]
    archive = validation.pack("gpu-validate-x")
    validation.write()
    assert sorted(p.name for p in out.iterdir()) == ["gpu-validate-x.tar.gz", "gpu-validate.json", "gpu-validate.txt"]
    report = json.loads((out / "gpu-validate.json").read_text())
    assert [c["verdict"] for c in report["parts"][0]["checks"]] == ["PASS", "SKIPPED"]
    trace = "runs/20261203T000000Z-host-cuda0/profiles/resnet50-rv/trace.pt.trace.json"
    log = "runs/20261203T000000Z-host-cuda0/worker-cuda0.log"
    assert report["archive"]["left_out"] == [trace, log] and archive.stat().st_size <= 200_000
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    # rvbench's layout, under one folder: the run directory as `rvbench run` wrote it, and the logs.
    assert "gpu-validate-x/runs/20261203T000000Z-host-cuda0/config.json" in names
    assert "gpu-validate-x/runs/20261203T000000Z-host-cuda0/results.csv" in names
    assert "gpu-validate-x/gpu-smoke.log" in names and f"gpu-validate-x/{trace}" not in names
    text = (out / "gpu-validate.txt").read_text()
    assert "== crosscheck: skipped: budget" in text and "smoke: 18 of 18 cells ok" in text
    summary = "\n".join(validation.summary())
    assert "slow                 SKIPPED" in summary and "crosscheck   skipped: budget" in summary


def test_a_stopped_validation_records_the_part_it_stopped(tmp_path):
    def echo(line: str) -> None:
        if line == "smoke started":
            raise KeyboardInterrupt

    validation = Validation("cuda:0", tmp_path, tmp_path, echo=echo, budgets={})
    smoke = lambda: [sys.executable, "-c", "import time; print('smoke started', flush=True); time.sleep(600)"]
    with pytest.raises(KeyboardInterrupt):
        validation.run((Part("gpu-smoke", 60, "smoke"),), {"gpu-smoke": smoke})
    report = json.loads((tmp_path / "gpu-validate.json").read_text())
    assert [(p["name"], p["status"]) for p in report["parts"]] == [("gpu-smoke", "stopped: signal")]


def test_no_smoke_run_means_no_crosscheck(tmp_path):
    validation = Validation("cuda:0", tmp_path, tmp_path, echo=lambda _: None, budgets={})
    (result,) = validation.run((Part("crosscheck", 30, "timm loop"),))
    assert result.status == "not run: the smoke run left no run directory"


def test_budgets_add_up_to_at_most_eight_minutes():
    assert TOTAL_S == 480.0
    assert validate.budgets_fit() <= TOTAL_S
    checks = validate.check_budgets()
    assert list(checks) == list(gpu.CHECKS) and all(b > 0 for b in checks.values())
    # The gpu-check part: one child's start-up and every check's budget, four minutes at most.
    assert guard.START_S + sum(checks.values()) <= PARTS[0].budget_s <= 240.0
    assert [p.name for p in PARTS] == ["gpu-check", "gpu-smoke", "crosscheck"]


def test_gpu_check_lines_are_what_the_guard_reads():
    line = rules.CheckResult("memory-prediction", False, "eager peak error within 3.1% (worst of 4)", seconds=41.6).line(10)
    found = guard.VERDICT.match(line)
    assert found.groups() == ("FAIL", "memory-prediction", "eager peak error within 3.1% (worst of 4)", "42")
    assert guard.HEADER.match("gpu-check on cuda:1 (NVIDIA H200): 13 checks")


@needs_no_cuda
def test_without_cuda_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["gpu-validate", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rvbench gpu-validate: error: gpu-validate needs a CUDA device, and torch sees none here "
                   "(torch.cuda.is_available() is False)"]
    assert list(tmp_path.iterdir()) == []


@needs_no_cuda
def test_make_gpu_validate_without_cuda_fails_with_that_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-validate", f"PYTHON={sys.executable}",
                           f"OUT={tmp_path / 'out'}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "gpu-validate needs a CUDA device" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.xdist_group("smoke_run")
def test_crosscheck_times_every_ok_cell_in_timms_loop(tmp_path_factory, tmp_path, capsys):
    import shutil

    import pandas as pd

    from report_fixture import real_smoke_run

    run_dir = tmp_path / "run"
    shutil.copytree(real_smoke_run(tmp_path_factory.getbasetemp() / "smoke_run"), run_dir, symlinks=True)
    assert main(["crosscheck", str(run_dir)]) == 0
    table = pd.read_csv(run_dir / "crosscheck.csv")
    rows = pd.read_json(run_dir / "results.jsonl", lines=True)
    ok = rows[rows["status"] == "ok"]
    assert len(table) == len(ok) and set(table["status"]) == {"ok"}
    assert (table["timm_loop_ms_mean"] > 0).all()
    merged = table.merge(ok, on=["arch", "impl", "batch_size", "precision", "mode"], suffixes=("", "_run"))
    # The run's own p50, through two text formats (pandas' JSON reader parses floats to within an ulp or so).
    assert np.isclose(merged["step_ms_p50"], merged["step_ms_p50_run"], rtol=1e-12, atol=0).all()
    pct = 100 * (table["timm_loop_ms_mean"] / table["step_ms_p50"] - 1)
    assert (abs(pct - table["timm_vs_p50_pct"]) < 1e-9).all()
    out = capsys.readouterr().out
    assert f"crosscheck: {len(ok)} of {len(ok)} cells timed" in out and "timm's loop mean" in out


def test_crosscheck_of_no_run_directory_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["crosscheck", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"rvbench crosscheck: error: {tmp_path} has no results.jsonl or "
                                               "results.parquet: not a run directory")


# The presets' own arithmetic (their comments): an eager cell ~2.1 s besides its timed loop, a compiled
# cell ~35 s, ~20 s for the worker, environment, results and report. Estimates until a GPU run
# measures them; this keeps a grown grid from silently passing its budget.
EAGER_S, COMPILED_S, FIXED_S = 2.1, 35.0, 20.0  # each loop at its longest: max_s, or the largest power floor


@pytest.mark.parametrize("preset, budget_s", [("gpu", TOTAL_S), ("gpu-smoke", PARTS[1].budget_s)])
def test_gpu_presets_fit_their_budgets_by_their_arithmetic(preset, budget_s):
    from bench.config.sweep import build_spec, expand, timing_config
    from bench.measure.power import POWER_MIN_S

    spec = build_spec(preset, "cuda:0", {})
    timing = timing_config(spec)

    def cost(cell) -> float:
        if cell.compile != "none":
            return COMPILED_S
        return EAGER_S + (timing.max_s if timing.no_power(cell.batch_size) else max(timing.max_s, POWER_MIN_S))

    assert FIXED_S + sum(cost(c) for c in expand(spec)) <= budget_s
