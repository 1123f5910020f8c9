"""The runner end to end through the CLI: real tiny cells, injected failures, interrupt and resume.

Failures are injected with the worker's RVBENCH_FAULT test hook (see bench/worker.py); which failures
are out of memory is the worker's own rule (`is_oom`), tested on the messages torch and its libraries raise.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.results import load, load_samples
from bench.runner.runner import Runner, profile_cells
from bench.runner import worker
from bench.runner.worker import FAULT_COMPILE_S, is_oom, is_sticky_cuda_error
from bench.report.summary import write_run_report as write_report
from bench.results.analysis import summary_table
from bench.config.cell import Cell
from bench.config.sweep import build_spec, expand

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "smoke", "--device", "cpu"]


def _start(out: Path, *args: str, fault: str = "") -> subprocess.Popen:
    """`rvbench run` into reports dir `out` (a resumed run stays where it is: no --out)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RVBENCH_FAULT": fault}
    where = [] if "--resume" in args else ["--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *where, *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _run(out: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess:
    proc = _start(out, *args, fault=fault)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _run_dir(out: Path) -> Path:
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def _wait_for_rows(run_dir_parent: Path, n: int, proc: subprocess.Popen) -> Path:
    """Wait until the run has n rows on disk (the run directory appears first)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        runs = list((run_dir_parent / "runs").glob("*/results.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= n:
            return runs[0].parent
        time.sleep(0.2)
    raise AssertionError(f"run did not reach {n} rows")


def test_smoke_run_end_to_end(tmp_path):
    out = tmp_path / "reports"
    res = _run(out, *TINY)
    assert res.returncode == 0, res.stderr
    run_dir = _run_dir(out)
    assert (out / "latest").resolve() == run_dir.resolve()
    for name in ("config.json", "env.json", "results.jsonl", "samples.jsonl", "results.parquet",
                 "results.csv", "results_timm.csv", "summary.txt"):
        assert (run_dir / name).exists(), name
    df = load(run_dir)
    expected = {c.cell_id for c in expand(build_spec("smoke", "cpu", {}))}
    assert set(df["cell_id"]) == expected and len(df) == len(expected)
    assert (df["status"] == "ok").all(), df[["cell_id", "message"]]
    assert (df["throughput"] > 0).all() and (df["run_id"] == run_dir.name).all()
    assert df["env_torch"].notna().all() and (df["wall_s"] > 0).all()
    assert set(load_samples(run_dir)) == expected
    assert json.loads((run_dir / "config.json").read_text())["cells"] == len(expected)
    assert "rv speed ÷ torchvision" in res.stdout and "report:" in res.stdout


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path):
    # Cell order: rv, torchvision, timm at batch 1, then at batch 2.
    fault = ";".join(["error:resnet18 rv bs1", "crash:resnet18 torchvision bs1", "hang:resnet18 rv bs2",
                      "oom:resnet18 timm bs2"])
    res = _run(tmp_path, *TINY, "--models", "resnet18", "--cell-timeout", "20", fault=fault)
    assert res.returncode == 0, res.stderr
    df = load(_run_dir(tmp_path)).set_index(["impl", "batch_size"])
    assert df["status"].to_dict() == {
        ("rv", 1): "error", ("torchvision", 1): "error", ("timm", 1): "ok",  # ok right after a crash
        ("rv", 2): "timeout", ("torchvision", 2): "ok", ("timm", 2): "oom",  # ok right after a timeout
    }
    assert "RuntimeError: injected error" in df.loc[("rv", 1), "message"]
    assert "worker crashed (killed by SIGKILL)" in df.loc[("torchvision", 1), "message"]
    assert "cell-timeout 20 s" in df.loc[("rv", 2), "message"]
    assert "batch size 2" in df.loc[("timm", 2), "message"]  # OOM recorded, batch never reduced
    assert pd.isna(df.loc[("timm", 2), "throughput"]) and df.loc[("timm", 1), "throughput"] > 0


def test_sticky_cuda_error_restarts_the_worker_for_the_next_cell(tmp_path):
    args = ["--models", "resnet18", "--impls", "rv,torchvision", "--batch-sizes", "1"]
    res = _run(tmp_path, *TINY, *args, fault="cudaerror:resnet18 rv bs1")
    assert res.returncode == 0, res.stderr
    run_dir = _run_dir(tmp_path)
    df = load(run_dir).set_index("impl")
    assert df["status"].to_dict() == {"rv": "error", "torchvision": "ok"}
    assert "illegal memory access" in df.loc["rv", "message"]
    log = (run_dir / "worker-cpu.log").read_text()
    assert log.count(" started") == 2 and "sticky CUDA error" in log  # a fresh worker ran torchvision


def test_find_max_batch_doubles_then_bisects_and_profile_runs(tmp_path):
    args = ["--models", "resnet18", "--impls", "rv", "--batch-sizes", "1", "--find-max-batch", "--profile"]
    # Probes 1, 2, 4 fit; 8 crashes the worker (a CPU OOM kill) and 5+ OOMs: bisecting 4..8 finds 4.
    res = _run(tmp_path, *TINY, *args, fault="crash:resnet18 rv bs8;oom:resnet18 rv@5")
    assert res.returncode == 0, res.stderr
    df = load(_run_dir(tmp_path))
    search = df[df["find_max_batch"] == True]  # noqa: E712
    assert len(df) == 2 and len(search) == 1
    row = search.iloc[0]
    assert (row["status"], row["batch_size"], row["max_batch_oom_at"]) == ("ok", 4, 5)
    assert row["throughput"] > 0
    assert (_run_dir(tmp_path) / "profiles" / "resnet18-rv" / "profile.json").exists()


def test_find_max_batch_error_above_batch_1_is_a_limit_and_at_batch_1_the_row(tmp_path):
    args = ["--models", "resnet18", "--impls", "rv,torchvision", "--batch-sizes", "1", "--find-max-batch"]
    # rv: 1, 2 fit; 4 and then 3 raise (each retried once in a fresh worker): no fit, largest is 2.
    # torchvision: an error at batch 1 is a bug, not a size limit.
    res = _run(tmp_path, *TINY, *args, fault="error:resnet18 rv@3;error:resnet18 torchvision bs1 ")
    assert res.returncode == 0, res.stderr
    run_dir = _run_dir(tmp_path)
    search = load(run_dir).query("find_max_batch == True").set_index("impl")  # noqa: E712
    rv, tv = search.loc["rv"], search.loc["torchvision"]
    assert (rv["status"], rv["batch_size"], rv["max_batch_oom_at"]) == ("ok", 2, 3)
    assert rv["max_batch_limit_reason"] == "error: RuntimeError: injected error in resnet18 rv bs3 32px fp32 inference cpu r0"
    assert tv["status"] == "error" and "at batch size 1" in tv["message"] and pd.isna(tv["max_batch_limit_reason"])
    assert (run_dir / "worker-cpu.log").read_text().count(" started") == 3  # the two retries' fresh workers


def test_find_max_batch_reports_why_it_stopped(tmp_path):
    args = ["--models", "resnet18", "--impls", "rv", "--batch-sizes", "1", "--find-max-batch"]
    res = _run(tmp_path, *TINY, *args, fault="oom:resnet18 rv@3")
    assert res.returncode == 0, res.stderr
    row = load(_run_dir(tmp_path)).query("find_max_batch == True").iloc[0]  # noqa: E712
    assert (row["batch_size"], row["max_batch_oom_at"], row["max_batch_limit_reason"]) == (2, 3, "oom")


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes"),
    RuntimeError("Unable to find a valid cuDNN algorithm to run convolution"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
])
def test_every_failed_allocation_is_an_oom_and_ends_the_max_batch_search_as_one(exc):
    """The worker replies "oom" (not an error row, and no worker restart: cuBLAS's is not a sticky
    CUDA error), and the max-batch search's probe takes that batch as the one that did not fit."""
    cell = Cell(arch="resnet18", impl="rv", batch_size=512, image_size=224, device="cuda")
    assert is_oom(exc) and not is_sticky_cuda_error(exc)
    reply = worker._classify(exc, cell)
    assert reply["status"] == "oom" and "worker_exits" not in reply
    runner = SimpleNamespace(_request=lambda cell, timing: reply, _probe_timing={})
    assert Runner._misfit(runner, cell, cell.batch_size) == "oom"


def _alive(pid: int) -> bool:
    """Whether a process exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_compilation_is_timed_apart_and_a_timeout_kills_the_worker_process_group(tmp_path):
    timeout = FAULT_COMPILE_S + 1
    args = ["--models", "resnet18", "--impls", "rv,torchvision", "--batch-sizes", "1", "--cell-timeout", f"{timeout:g}"]
    # rv spends FAULT_COMPILE_S compiling (a simulated compilation through dynamo's callbacks) and
    # seconds running: more than the timeout in all, less in each. torchvision hangs with a child process.
    res = _run(tmp_path, *TINY, *args, fault="compile:resnet18 rv bs1;hang:resnet18 torchvision bs1")
    assert res.returncode == 0, res.stderr
    run_dir = _run_dir(tmp_path)
    df = load(run_dir).set_index("impl")
    assert df.loc["rv", "status"] == "ok" and df.loc["rv", "wall_s"] > timeout
    assert df.loc["torchvision", "status"] == "timeout"
    assert f"over --cell-timeout {timeout:g} s outside compilation" in df.loc["torchvision", "message"]
    (child,) = re.findall(r"injected hang, child (\d+)", (run_dir / "worker-cpu.log").read_text())
    assert not _alive(int(child))  # killed with the worker's process group


def test_interrupt_then_kill_then_resume_runs_every_cell_once(tmp_path):
    sweep = ["--models", "resnet18", "--batch-sizes", "1", "--rounds", "2"]  # rv tv timm, rv tv timm
    expected = {c.cell_id for c in expand(build_spec("smoke", "cpu", {
        "models": ["resnet18"], "batch_sizes": [1], "rounds": 2}))}
    # 1. Ctrl-C while the first round-1 cell hangs: the 3 round-0 rows are kept, tables written.
    proc = _start(tmp_path, *TINY, *sweep, fault="hang:rv bs1 32px fp32 inference cpu r1")
    run_dir = _wait_for_rows(tmp_path, 3, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in stdout
    assert len(load(run_dir)) == 3 and (run_dir / "results.parquet").exists()
    # 2. Resume, then kill -9 the runner's process group while the last cell hangs.
    proc = _start(tmp_path, "--resume", str(run_dir), fault="hang:timm bs1 32px fp32 inference cpu r1")
    _wait_for_rows(tmp_path, 5, proc)
    log = run_dir / "worker-cpu.log"
    deadline = time.monotonic() + 120
    while log.read_text().count("injected hang") < 2 and time.monotonic() < deadline:  # the timm cell hangs
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # The worker, in its own process group, outlives the runner only until it notices: then it kills
    # its group, hung cell and child process included.
    child = int(re.findall(r"injected hang, child (\d+)", log.read_text())[-1])
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)
    # 3. Resume again: only the missing cell runs.
    res = _run(tmp_path, "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    ids = [json.loads(line)["cell_id"] for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(expected)  # every cell exactly once
    assert (load(run_dir)["status"] == "ok").all()


def test_resume_refused_while_another_run_holds_the_lock(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(build_spec("smoke", "cpu", {}).to_json()))
    with open(run_dir / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a separate open file: flock conflicts in-process too
        assert main(["run", "--resume", str(run_dir)]) == 2
    assert f"run in progress in {run_dir} (another rvbench run holds its lock)" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.json"]


def _rows(device: str) -> pd.DataFrame:
    """Synthetic results: one arch, two batch sizes, three impls, two rounds; timm bs2 failed."""
    rows = []
    for bs, rnd, (impl, throughput) in itertools.product(
            [1, 2], [0, 1], [("rv", 10.0), ("torchvision", 11.0), ("timm", 20.0)]):
        ok = not (impl == "timm" and bs == 2)
        rows.append({"arch": "resnet18", "impl": impl, "batch_size": bs, "image_size": 32, "precision": "fp32",
                     "channels_last": False, "compile": "none", "mode": "inference", "optimizer": "default",
                     "backend": "eager",
                     "device": device, "round": rnd, "find_max_batch": False, "status": "ok" if ok else "error",
                     "throughput": throughput * bs + rnd if ok else None, "step_ms_p50": 1.0,
                     "mem_rss_delta_mb": 5.0, "mem_peak_alloc_mb": None if device == "cpu" else 7.0})
    return pd.DataFrame(rows)


def test_profile_cells_profile_every_impl_at_the_arch_best_config():
    # Best median of any impl: torchvision bs2 (22.5). timm, whose own best is bs1, is profiled at bs2 too.
    cells = profile_cells(_rows("cpu"))
    assert [(c.impl, c.batch_size, c.round) for c in cells] == [("rv", 2, 0), ("torchvision", 2, 0), ("timm", 2, 0)]


def test_summary_labels_cpu_memory_as_rss_growth():
    assert "RSS growth MB (approx.)" in summary_table(_rows("cpu")).columns
    gpu = summary_table(_rows("cuda:0"))
    assert gpu["peak MB"].tolist() == [7.0] and "RSS growth MB (approx.)" not in gpu.columns


def test_failed_html_report_returns_none_and_keeps_summary(tmp_path):
    assert write_report(tmp_path, "cells: none\n") is None  # no results: the HTML report cannot be built
    text = (tmp_path / "summary.txt").read_text()
    assert text.startswith("cells: none\n") and "HTML report failed" in text


@pytest.mark.parametrize("start, capacity, probes", [
    (1, 300, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 384, 320, 288, 304, 296, 300, 302, 301]),
    (300, 300, [300, 600, 450, 375, 337, 318, 309, 304, 302, 301]),  # from an exact prediction
    (320, 300, [320, 160, 240, 280, 300, 310, 305, 302, 301]),  # from one 7% too high
    (4, 0, [4, 2, 1]),  # nothing fits
    (3000, 3500, [3000, 4096, 3548, 3274, 3411, 3479, 3513, 3496, 3504, 3500, 3502, 3501]),  # doubling capped
])
def test_max_batch_search_from_a_start_finds_the_same_batch(start, capacity, probes, tmp_path):
    """The search from a predicted start halves or doubles from it, then bisects: the same largest
    batch as from 1, in fewer probes when the prediction is close."""
    runner = Runner.__new__(Runner)
    seen = []
    runner._misfit = lambda base, batch: seen.append(batch) or (None if batch <= capacity else "oom")
    best, misfit_at, reason = Runner._search(runner, Cell(arch="resnet18", impl="rv", batch_size=1, image_size=224, device="cuda:0"), start)
    assert seen == probes
    assert (best, misfit_at, reason) == ((capacity or None), capacity + 1 if capacity else 1, "oom")


def test_max_batch_search_from_near_the_limit_says_when_everything_fit():
    runner = Runner.__new__(Runner)
    runner._misfit = lambda base, batch: None
    cell = Cell(arch="resnet18", impl="rv", batch_size=1, image_size=224, device="cuda:0")
    assert Runner._search(runner, cell, 3000) == (4096, None, "limit")
