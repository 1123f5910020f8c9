"""Contention (bench.measure.contention): a real cell measured beside CPU burners, the /proc arithmetic on
hand-written counters, the GPU's other processes through a fake NVML, and the run-level warning in every
view of a run (bench.results.analysis.contention_warning)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from report_fixture import CONTENDED, mark_contended, write_run

from bench.cli import main
from bench.columns import names
from bench.config.sweep import build_spec, expand
from bench.measure import contention
from bench.measure.contention import ContentionMonitor, CpuReading, others_share, read_cpu
from bench.regress.compare import compare_runs
from bench.report.summary import summary_text
from bench.results import load
from bench.results.analysis import config_medians, contention_warning
from bench.results.rows import make_row

REPO = Path(__file__).resolve().parent.parent
HZ = 100

# ---- a real cell beside CPU burners ---------------------------------------------------------------

# A worker that measures a small CPU cell each time it reads a line, and answers with its contention columns.
MEASURER = """
import json, sys
from bench.columns import names
from bench.config.cell import Cell
from bench.config.sweep import TimingConfig
from bench.measure.cell import measure_cell

timing = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=6, min_s=0.5, max_s=1.0, target_rel_ci=None)
for _ in sys.stdin:
    row = measure_cell(Cell("resnet18", "rv", batch_size=1, image_size=32), timing)
    print(json.dumps({name: row[name] for name in names("contention")}), flush=True)
"""
# Spins for at most a minute, so a burner outlives a killed test by no more than that.
BURNER = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


def _measure(worker: subprocess.Popen) -> dict:
    worker.stdin.write("\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    assert line, worker.stderr.read()
    return json.loads(line)


def test_others_cpu_rises_beside_burners_and_flags_the_cell():
    """The cell is measured in a worker process, as the runner measures it; the burners are this test's
    children, not the worker's, so they are other processes to it. Two per CPU, each in a session of its
    own (its own scheduling group, as another user's job is), on the worker's CPUs by inheritance.

    The machine is shared, so the quiet reading is only required to be lower. The burdened one has a floor
    whatever else runs: with 2n burners on n CPUs the worker's group gets at most 1/(2n + 1) of them under
    autogroup scheduling, 2 of 2n + 2 threads without it, so others hold at least 2/3 of the capacity."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([sys.executable, "-c", MEASURER], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    burners: list[subprocess.Popen] = []
    try:
        quiet = _measure(worker)
        burners = [subprocess.Popen([sys.executable, "-c", BURNER], start_new_session=True)
                   for _ in range(2 * len(os.sched_getaffinity(0)))]
        burdened = _measure(worker)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        worker.stdin.close()
        worker.wait(timeout=60)
    assert burdened["others_cpu"] >= 0.6 and burdened["others_cpu"] > quiet["others_cpu"], (quiet, burdened)
    assert burdened["contended"] is True
    assert burdened["gpu_other_procs"] is None  # a CPU cell
    assert quiet["load_avg"] is not None and burdened["load_avg"] is not None


# ---- /proc arithmetic on hand-written counters ------------------------------------------------------

ME = 4242


def _stat_line(name: str, user: int, nice: int, system: int, idle: int, iowait: int, irq: int, softirq: int,
               steal: int) -> str:
    return f"{name} {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0"


def _pid_stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    """A /proc/<pid>/stat line: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    cmajflt utime stime cutime cstime priority ..."""
    return f"{pid} ({comm}) R {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0"


def _proc(root: Path, cpus: dict[int, int], processes: dict[int, tuple]) -> Path:
    """A stand-in /proc: cpuN lines with `busy` ticks spread over the busy fields (and idle and iowait ticks
    that must not count), and /proc/<pid>/stat for each process (comm, ppid, utime, stime[, cutime, cstime])."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [_stat_line("cpu", *[sum(cpus.values())] * 8)]  # the aggregate line: never read
    for n, busy in cpus.items():
        user, system, steal = busy // 2, busy // 4, busy - busy // 2 - busy // 4
        lines.append(_stat_line(f"cpu{n}", user, 0, system, 10_000 + busy, 777 + busy, 0, 0, steal))
    (root / "stat").write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99", ""]))
    for pid, fields in processes.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(_pid_stat(pid, *fields))
    return root


def _reading(proc: Path, at_s: float, cpus: set[int] = frozenset({0, 1})) -> CpuReading:
    reading = read_cpu(cpus, proc, pid=ME)
    assert reading is not None
    return CpuReading(at_s, reading.busy, reading.cpus, reading.own, reading.tree)


def test_busy_ticks_of_the_cells_cpus_only():
    text = (f"{_stat_line('cpu', 9, 9, 9, 9, 9, 9, 9, 9)}\n{_stat_line('cpu0', 1, 2, 3, 500, 600, 4, 5, 6)}\n"
            f"{_stat_line('cpu1', 100, 0, 0, 0, 0, 0, 0, 0)}\n{_stat_line('cpu2', 10, 0, 0, 0, 0, 0, 0, 1)}\n")
    assert contention.busy_ticks(text, {0, 2}) == (1 + 2 + 3 + 4 + 5 + 6 + 10 + 1, 2)  # idle, iowait left out
    assert contention.busy_ticks(text, {7}) == (0, 0)


def test_own_tree_is_taken_off_and_strangers_count(tmp_path):
    """Between two readings 1 s apart on 2 CPUs (200 ticks of capacity): the CPUs got 150 busy ticks;
    our process (a command name with a space and a parenthesis) used 60, its child 20 and the child's own
    child 10; a stranger whose parent is not ours used the rest. Others: 150 - 90 = 60 ticks, 0.30."""
    procs = {ME: ("py) worker", 1, 100, 50), 5000: ("compile", ME, 10, 0), 5001: ("pool", 5000, 5, 0),
             77: ("stranger", 1, 1000, 0)}
    start = _reading(_proc(tmp_path / "a", {0: 1000, 1: 2000, 2: 50_000}, procs), 10.0)
    procs = {ME: ("py) worker", 1, 140, 70), 5000: ("compile", ME, 20, 10), 5001: ("pool", 5000, 15, 0),
             77: ("stranger", 1, 1060, 0)}
    end = _reading(_proc(tmp_path / "b", {0: 1070, 1: 2080, 2: 90_000}, procs), 11.0)  # cpu2: not ours
    assert start.tree == end.tree == {ME, 5000, 5001}
    assert end.own - start.own == 90
    assert others_share(start, end, HZ) == pytest.approx(0.30)


def test_a_child_reaped_in_the_loop_stays_ours(tmp_path):
    """A compile worker that exits during the loop: its 30 ticks before and 10 during move into our
    cutime (40), so our tree used 10 + 20 (our own) and nothing of it reads as another process's."""
    start = _reading(_proc(tmp_path / "a", {0: 0, 1: 0}, {ME: ("w", 1, 100, 0), 6000: ("c", ME, 30, 0)}), 0.0)
    end = _reading(_proc(tmp_path / "b", {0: 15, 1: 15}, {ME: ("w", 1, 120, 0, 40, 0)}), 1.0)
    assert end.own - start.own == 30
    assert others_share(start, end, HZ) == 0.0


def test_share_is_clamped_and_a_short_or_missing_window_is_none(tmp_path):
    quiet = {ME: ("w", 1, 0, 0)}
    start = _reading(_proc(tmp_path / "a", {0: 0, 1: 0}, quiet), 0.0)
    # More busy ticks than the window holds (tick rounding, steal on a VM): 1, never more.
    assert others_share(start, _reading(_proc(tmp_path / "b", {0: 150, 1: 150}, quiet), 1.0), HZ) == 1.0
    # Our tree counted more than the CPUs did (a child reaped while the tree was read): 0, never less.
    busy_self = _reading(_proc(tmp_path / "c", {0: 10, 1: 10}, {ME: ("w", 1, 80, 0)}), 1.0)
    assert others_share(start, busy_self, HZ) == 0.0
    # A loop of fewer than MIN_WINDOW_TICKS ticks: rounding, not a measurement.
    brief = (contention.MIN_WINDOW_TICKS - 1) / HZ
    assert others_share(start, _reading(_proc(tmp_path / "d", {0: 5, 1: 5}, quiet), brief), HZ) is None
    assert read_cpu({0}, tmp_path / "no-proc") is None
    assert read_cpu({9}, tmp_path / "a") is None  # none of the cell's CPUs listed


# ---- the GPU's other processes, through a fake NVML (this machine has no GPU) -------------------------

class FakeNvmlError(Exception):
    pass


def fake_nvml(compute: list[list[int]], graphics: list[list[int]] | None = None) -> types.ModuleType:
    """A stand-in for pynvml: each call of the process queries answers the next pid list of `compute` and
    `graphics` (a process object with a `pid`, as nvidia-ml-py gives); None in a list raises NVMLError."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError

    def answers(lists):
        def query(handle):
            pids = lists.pop(0)
            if pids is None:
                raise FakeNvmlError("Not Supported")
            return [types.SimpleNamespace(pid=pid, usedGpuMemory=None) for pid in pids]
        return query

    nvml.nvmlDeviceGetComputeRunningProcesses = answers(compute)
    nvml.nvmlDeviceGetGraphicsRunningProcesses = answers(graphics or [[] for _ in compute])
    return nvml


@pytest.mark.parametrize(("compute", "graphics", "ours", "others"), [
    ([ME, 10, 11], [11], {ME}, 2),  # a pid in both lists is one process
    ([ME, 5000, 10], [], {ME, 5000}, 1),  # our Inductor worker holds a context too: ours
    ([900, 901, 902], [], {ME}, None),  # host pids in a container: how many are rvbench's is unknown
    ([900, 901], [], {ME}, None),  # the worker and the runner, under the host's pids: not a neighbour
    ([ME, 4242], [], {ME, 4242}, 0),  # the runner (our parent) holds a context too: ours
    ([], [], {ME}, None),  # NVML lists nothing, not even us: it cannot see processes
    (None, None, {ME}, None),  # the driver refuses both queries
])
def test_other_gpu_processes(compute, graphics, ours, others):
    nvml = fake_nvml([compute], [graphics])
    assert contention.other_gpu_processes(nvml, object(), ours) == others


def test_monitor_counts_gpu_processes_at_both_ends_and_flags_the_cell():
    """Another process arrives during the loop: seen at the end, so the cell is contended whatever the CPU said."""
    me = os.getpid()
    monitor = ContentionMonitor(load_avg=0.5, gpu=(fake_nvml([[me], [me, 31337]]), object()))
    monitor.start()
    monitor.stop()
    cols = monitor.columns()
    assert list(cols) == list(names("contention"))
    assert cols["gpu_other_procs"] == 1 and cols["contended"] is True and cols["load_avg"] == 0.5
    assert cols["others_cpu"] is None  # a loop of no time at all is too short to tell


def test_verdict():
    assert contention.is_contended(None, None) is None
    assert contention.is_contended(0.02, None) is False
    assert contention.is_contended(contention.CONTENDED_CPU_SHARE, None) is True
    assert contention.is_contended(None, 0) is False and contention.is_contended(0.0, 1) is True


# ---- the run-level warning ----------------------------------------------------------------------------

SMALL = {"archs": ("resnet50",), "batches": (8, 64), "precisions": ("fp32",), "rounds": 2, "failures": {}}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A run made before contention was measured: none of its rows has the columns."""
    return write_run(tmp_path_factory.mktemp("old"), **SMALL)


def test_many_contended_cells_warn(tmp_path):
    run_dir = write_run(tmp_path / "busy", **SMALL)
    marked = mark_contended(run_dir, 0.5)
    df = load(run_dir)
    ok = int((df["status"] == "ok").sum())
    warning = contention_warning(df)
    assert warning == (f"Warning: the machine was busy during this run, so its timings, best configurations and "
                       f"ratios are unreliable: {marked} of {ok} ok cells ran contended (other processes used a "
                       f"median 45% of their CPUs; load average up to {CONTENDED['load_avg']}); rerun it on a "
                       f"quiet machine.")
    assert f"\n{warning}\n" in summary_text(df)
    assert config_medians(df)["contended_rounds"].sum() == marked


def test_few_contended_cells_do_not_warn(tmp_path):
    run_dir = write_run(tmp_path / "mostly-quiet", **SMALL)
    assert mark_contended(run_dir, 0.1) > 0
    assert contention_warning(load(run_dir)) is None
    mark_contended(run_dir, 0.0)
    assert contention_warning(load(run_dir)) is None


def test_a_run_from_before_contention_loads_summarises_and_compares(old_run, tmp_path):
    df = load(old_run)
    assert df[list(names("contention"))].isna().all().all()
    assert contention_warning(df) is None and "Warning" not in summary_text(df)
    assert (config_medians(df)["contended_rounds"] == 0).all()
    busy = write_run(tmp_path / "busy", **SMALL)
    mark_contended(busy, 1.0)
    assert {c.verdict for c in compare_runs(old_run, busy).cells} == {"unchanged"}


def _finished_cpu_run(base: Path) -> Path:
    """A run directory of two CPU cells, both recorded (contended), as `rvbench run` leaves it: resuming it
    measures nothing and goes straight to the tables, the summary and the report."""
    spec = build_spec("smoke", "cpu", {"models": ["resnet18"], "impls": ["rv", "torchvision"], "batch_sizes": [1]})
    cells = expand(spec)
    run_dir = base / "runs" / "busy-cpu"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(
        {**spec.to_json(), "cells": len(cells), "jobs": len(cells), "devices": ["cpu"], "cluster": None}))
    rows = [make_row("busy-cpu", cell.cell_id, cell, "ok", started=time.time(), find_max_batch=False, n_iters=3,
                     timed_s=0.1, step_ms_p50=30.0 + i, step_ms_p99=31.0 + i, throughput=1000 / (30.0 + i),
                     **CONTENDED)
            for i, cell in enumerate(cells)]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "samples.jsonl").write_text(
        "".join(json.dumps({"cell_id": r["cell_id"], "samples_ms": [r["step_ms_p50"]] * 3}) + "\n" for r in rows))
    return run_dir


def test_the_run_prints_the_warning_and_keeps_it_in_summary_and_report(tmp_path, capsys):
    run_dir = _finished_cpu_run(tmp_path)
    assert main(["run", "--resume", str(run_dir)]) == 0
    warning = contention_warning(load(run_dir))
    assert warning is not None and "2 of 2 ok cells ran contended" in warning
    assert warning in capsys.readouterr().out
    assert warning in (run_dir / "summary.txt").read_text()
    html = (run_dir / "index.html").read_text()
    header = html.split("<nav>")[0]
    assert f'<p class="warning" role="alert">{warning}</p>' in header
    assert "Contended (other processes busy during the timed loop): rv in 1 of 1 round" in html
