"""`rvbench gpu-check` / `make gpu-check`: without CUDA one line and exit 2 with nothing written;
the pass rules (the `judge_*` functions) on synthetic figures; a raising check is a FAIL, not a crash.

The checks themselves need a GPU; these tests cover everything around them that a CPU can run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.checks import gpu, processes, rules
from bench.cli import main
from bench.measure.memory import MB, CudaPeak

ROOT = Path(__file__).resolve().parents[1]
needs_no_cuda = pytest.mark.skipif(gpu.torch.cuda.is_available(), reason="tests the no-CUDA path")


@needs_no_cuda
def test_without_cuda_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["gpu-check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rvbench gpu-check: error: gpu-check needs a CUDA device, and torch sees none here "
                   "(torch.cuda.is_available() is False)"]
    assert list(tmp_path.iterdir()) == []


@needs_no_cuda
def test_make_gpu_check_without_cuda_fails_with_that_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-check", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "gpu-check needs a CUDA device" in done.stderr


def test_unknown_check_named_with_the_valid_ones(capsys):
    assert main(["gpu-check", "--only", "timing,bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown check 'bogus'" in err and "device, timing, profile" in err


def test_timing_rule_is_three_percent_against_both_references():
    assert rules.judge_timing(10.0, 10.29, 9.75)
    assert not rules.judge_timing(10.0, 10.4, 10.0)  # 4% off blocked_autorange
    assert not rules.judge_timing(10.0, 10.0, 9.6)  # 4% off the synchronised loop


@pytest.mark.parametrize("alloc, reserved, activation, ok", [
    (4000.0, 4600.0, 1200.0, True),
    (4000.0, 6000.0, 1200.0, False),  # reserved beyond 1.25 x allocated + 512 MB: inflated
    (4000.0, 4100.0, -300.0, False),  # negative activations: the at-rest point included freed gradients
    (100.0, 600.0, 10.0, True),  # small cells: the 512 MB slack covers the allocator's granularity
])
def test_memory_rule(alloc, reserved, activation, ok):
    row = {"mem_peak_alloc_mb": alloc, "mem_peak_reserved_mb": reserved, "mem_activation_mb": activation,
           "mem_graph_pool_mb": 0.0}
    assert rules.judge_memory(row)[0] is ok


def test_memory_rule_on_a_cuda_graph_row():
    """CudaPeak's columns with a graph pool: no activation figure, and the pool inside reserved."""
    peak = CudaPeak(torch.device("cuda", 0))
    peak.peak_alloc, peak.peak_reserved, peak.at_rest, peak.graph_pool = 3000 * MB, 7000 * MB, 2800 * MB, 4000 * MB
    row = peak.columns(weights=100 * MB)
    assert row["mem_activation_mb"] is None
    assert rules.judge_memory(row) == (True, "no activation figure (CUDA graphs), reserved 7000 / allocated 3000 MB"
                                           " beside the CUDA graphs' pool of 4000 MB")
    assert rules.judge_memory({**row, "mem_peak_reserved_mb": 3500.0, "mem_graph_pool_mb": 100.0})[0]  # no TypeError
    inflated = {**row, "mem_peak_reserved_mb": 9000.0}  # 5000 MB beside the pool, over 1.25 x 3000 + 512
    assert rules.judge_memory(inflated) == (
        False, "reserved 9000 MB inflated over allocated 3000 MB beside the CUDA graphs' pool of 4000 MB")


def test_profile_rule_step_within_ten_percent_and_modules_within_the_step():
    assert rules.judge_profile(10.5, 10.0, modules_ms=8.0, busy_ms=9.0)
    assert not rules.judge_profile(5.1, 10.0, modules_ms=8.0, busy_ms=9.0)  # the half-step bug
    assert not rules.judge_profile(10.0, 10.0, modules_ms=9.5, busy_ms=9.0)  # kernels counted twice
    assert rules.judge_profile(10.0, 10.0, modules_ms=None, busy_ms=9.0)  # compiled: no module ranges
    assert rules.judge_profile(10.0, 10.0, modules_ms=None, busy_ms=None)  # CUDA graphs opaque to CUPTI


def test_profile_check_profiles_the_cell_it_measures_at_batch_256(monkeypatch, tmp_path):
    """At batch 64 the host's cost of recording shapes rivals the GPU step and the 10% rule fails a
    sound profiler; the check profiles as `rvbench profile` does (default options), GPU-bound."""
    import bench.profiling.profile as profiling

    seen = {}

    def measure(cell, timing):
        seen["measured"] = cell
        return {"step_ms_p50": 20.0}

    def profile(cell, out_dir):
        seen["profiled"] = cell
        return {"step_ms": 21.0, "modules_ms_total": 8.0, "busy_ms": 19.0, "categories": {}, "categories_note": None}

    monkeypatch.setattr(gpu, "measure_cell", measure)
    monkeypatch.setattr(profiling, "profile_cell", profile)
    passed, figure, _ = gpu.check_profile(gpu.Context("cuda:0", tmp_path))
    assert seen["profiled"] == seen["measured"] and seen["profiled"].batch_size == 256
    assert passed and figure.startswith("profiled step 21.000 ms vs measured p50 20.000 ms")


def test_a_raising_check_is_a_fail_with_its_error_and_the_rest_still_run(monkeypatch, tmp_path):
    def broken(ctx):
        raise RuntimeError("CUDA error: misaligned address\nmore detail")

    monkeypatch.setitem(gpu.CHECKS, "broken", gpu.Check(broken, 1))
    monkeypatch.setitem(gpu.CHECKS, "fine", gpu.Check(lambda ctx: (None, "42 W", {"w": 42}), 1))
    ctx = gpu.Context("cuda:0", tmp_path)
    failed, info = gpu.run_check("broken", ctx), gpu.run_check("fine", ctx)
    assert (failed.verdict, failed.figure) == ("FAIL", "raised RuntimeError: CUDA error: misaligned address")
    assert "Traceback" in failed.data["traceback"]
    assert (info.verdict, info.figure, info.data) == ("INFO", "42 W", {"w": 42})


@pytest.mark.parametrize("predicted, measured, ok", [
    (4600.0, 5000.0, True),  # -8%
    (4400.0, 5000.0, False),  # -12% of a GiB-sized training peak: mispredicted
    (5540.0, 5000.0, False),  # +10.8%
    (440.0, 500.0, True),  # -12% but 60 MiB: the fixed terms the predictor leaves out
    (430.0, 500.0, False),  # 70 MiB off a small peak
    (560.0, 500.0, True),
])
def test_memory_prediction_rule_is_ten_percent_or_64_mib(predicted, measured, ok):
    assert rules.judge_memory_prediction(predicted, measured) is ok


def test_memory_prediction_verdicts_are_the_judges(monkeypatch, tmp_path):
    from bench.counting import memory

    measured = {"inference": 500.0, "train": 5000.0}
    monkeypatch.setattr(gpu, "measure_cell", lambda cell, timing: {"mem_peak_alloc_mb": measured[cell.mode]})
    monkeypatch.setattr(memory, "predict_cell_peak", lambda cell: (440.0 if cell.mode == "inference" else 4400.0) * memory.MB)
    passed, figure, data = gpu.check_memory_prediction(gpu.Context("cuda:0", tmp_path))
    assert passed is False and "within 10% or 64 MiB" in figure  # train -12% fails; inference -60 MiB passes
    assert [v["passed"] for v in data.values()] == [True, False, True, False]


def test_max_batch_frees_this_process_and_searches_from_the_prediction(monkeypatch, tmp_path):
    """The max-batch search runs in a worker on the same GPU: the check gives back what this process
    cached before the runner exists, and the search starts at the predicted largest batch."""
    from bench.counting import memory
    from bench.execute import prepare
    from bench.runner import runner

    events = []
    monkeypatch.setattr(memory, "max_batch", lambda *args, **kwargs: events.append(("predict", kwargs["capability"])) or 300)
    monkeypatch.setattr(prepare, "free_cuda_memory", lambda: events.append("free"))
    monkeypatch.setattr(gpu.torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 80 * 2**30}))
    monkeypatch.setattr(gpu.torch.cuda, "get_device_capability", lambda device: (9, 0))

    class FakeRunner:
        def __init__(self, *args) -> None:
            events.append("runner")

        def run(self, job):
            events.append(("search", job.cell.arch, job.cell.mode, job.start))
            return {"status": "ok", "batch_size": 290, "max_batch_limit_reason": "oom", "max_batch_oom_at": 291}, []

        def close(self) -> None:
            events.append("close")

    monkeypatch.setattr(runner, "Runner", FakeRunner)
    passed, figure, data = processes.check_max_batch(gpu.Context("cuda:0", tmp_path))
    assert events == ["free", ("predict", (9, 0)), "runner", ("search", "resnet50", "train", 300), "close"]
    assert passed is None and figure == "resnet50 train amp-bf16: predicted 300, searched 290 (+3.4%)"
    assert data["oom_at"] == 291
