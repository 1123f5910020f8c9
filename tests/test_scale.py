"""`rvbench scale` end to end on the CPU: real torchrun, real gloo, a tiny ViT at 32 px.

One command runs 1, 2 and 3 ranks, shared by the tests below (torchrun's start-up costs seconds); the
3-rank job's rank 2 raises through the RVBENCH_SCALE_FAULT hook (bench.runner.ddp_rank), so the
same run also shows how a failing rank ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler import ProfilerState

from bench.checks.rules import judge_ddp
from bench.columns import for_mode
from bench.cli import main
from bench.errors import UsageError
from bench.hardware.gpus import LINKS, Link, parse_link, ring_allreduce_s
from bench.profiling.comm import overlap, profiler_options, split_events, total, union
from bench.results import load
from bench.runner import ddp_rank
from bench.runner.scale import alive

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("scale")

REPO = Path(__file__).resolve().parent.parent
BATCH = 2
ARGS = ["vit_tiny_patch16_224", "--impls", "rv", "--device", "cpu", "--image-size", "32",
        "--batch-per-rank", str(BATCH), "--warmup", "2", "--steps", "5", "--link-bw", "10GB/s"]


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("scale") / "reports"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RVBENCH_SCALE_FAULT": "rank2"}
    done = subprocess.run([sys.executable, "-m", "bench", "scale", *ARGS, "--nproc", "1,2,3", "--timeout", "240",
                           "--out", str(out)], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (out / "runs").is_dir(), done.stderr
    (run_dir,) = (out / "runs").iterdir()
    return done, run_dir


def _rows(run_dir: Path) -> dict[int, dict]:
    return {int(r["world_size"]): r for r in load(run_dir).to_dict("records")}


def test_one_and_two_ranks_give_ok_rows_with_efficiency(scale_run):
    done, run_dir = scale_run
    assert done.returncode == 0, done.stderr
    rows = _rows(run_dir)
    one, two = rows[1], rows[2]
    assert (one["status"], two["status"], one["mode"], two["mode"]) == ("ok", "ok", "ddp-train", "ddp-train")
    assert one["scaling_efficiency"] == 1.0 and one["scaling_base"] == two["scaling_base"] == 1
    assert two["scaling_efficiency"] == pytest.approx((two["throughput"] / 2) / one["throughput"])
    ranks = json.loads(two["rank_stats"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert two["step_ms_p50"] == max(r["step_ms_p50"] for r in ranks)  # the slowest rank sets the step
    assert two["throughput"] == pytest.approx(2 * BATCH / (two["step_ms_p50"] / 1e3))
    assert one["comm_share"] < 1 and 0 < two["comm_share"] < 1 and two["comm_ms"] > 0
    assert two["mem_rss_delta_mb"] > 0 and "max over ranks" in two["mem_note"]
    carried = {c for row in rows.values() for c, v in row.items() if v is not None and v == v}  # not null or NaN
    assert carried <= set(for_mode("ddp-train")), carried - set(for_mode("ddp-train"))  # as bench.columns declares


def test_all_reduced_bytes_equal_the_gradient_bytes(scale_run):
    _, run_dir = scale_run
    for world_size, row in _rows(run_dir).items():
        if row["status"] != "ok":
            continue
        assert row["allreduce_bytes"] == row["grad_bytes"] == row["params_trainable"] * 4  # fp32 gradients
        expected = 2 * (world_size - 1) / world_size * row["allreduce_bytes"] / 10e9 * 1e3
        assert row["allreduce_bound_ms"] == pytest.approx(expected)


def test_a_raising_rank_gives_an_error_row_and_leaves_no_process(scale_run):
    _, run_dir = scale_run
    row = _rows(run_dir)[3]
    assert row["status"] == "error"  # not "timeout": torchrun ended the job when the rank raised
    assert row["message"].splitlines()[0].startswith(
        "world size 3: rank 2 failed: RuntimeError: injected fault on rank 2 (RVBENCH_SCALE_FAULT)")
    assert len(_rank_pids(run_dir)) == 1 + 2 + 3
    _assert_nothing_left(run_dir)


def _rank_pids(run_dir: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in run_dir.glob("scale/*/rank*.json")]


def _assert_nothing_left(run_dir: Path) -> None:
    """No rank that recorded its pid is alive, and no process names the run (torchrun, a rank, their children)."""
    assert not [pid for pid in _rank_pids(run_dir) if alive(pid)]
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run_dir).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:
            pass
    assert not leftovers


def test_the_report_has_the_scaling_section(scale_run):
    """The run's page comes from `write_report` reading the run back, as `rvbench report DIR` does."""
    _, run_dir = scale_run
    html = (run_dir / "index.html").read_text()
    assert 'id="scaling"' in html
    for key in ("scaling_throughput", "scaling_efficiency", "scaling_comm"):
        assert f'data-plot="{key}"' in html
    assert "world size 3: rank 2 failed" in html  # the failed job is in the failed-cells table
    assert '<section id="summary">' not in html  # a scale-only run has no sweep sections
    assert "world sizes: 2 ok, 1 error" in (run_dir / "summary.txt").read_text()


@pytest.mark.parametrize("argv, says", [
    (["compare", "{run}", "{run}"], "{run} is an `rvbench scale` run; compare compares `rvbench run` sweeps"),
    (["run", "--resume", "{run}"], "{run} was made by `rvbench scale`, which has no --resume"),
], ids=["compare", "resume"])
def test_compare_and_resume_refuse_a_scale_run_naming_its_command(scale_run, capsys, argv, says):
    """Compare would pool its world sizes into one configuration (and it keeps no raw step times)."""
    _, run_dir = scale_run
    files = sorted(run_dir.rglob("*"))
    assert main([a.format(run=run_dir) for a in argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert says.format(run=run_dir) in line and sorted(run_dir.rglob("*")) == files


@pytest.mark.parametrize("bad, says", [
    (["--nproc", "0"], "--nproc must be >= 1"),
    (["--backend", "nccl"], "--backend nccl needs CUDA"),
    (["--link-bw", "400"], "give a bandwidth per direction with its unit"),
    (["--nnodes", "2"], "--nnodes > 1 needs --rdzv-endpoint"),
    (["--rdzv-endpoint", "node1"], "expected HOST:PORT"),
    (["--rdzv-endpoint", ":99999"], "expected HOST:PORT"),
    (["--rdzv-endpoint", "127.0.0.1:99999"], "the port must be 1..65535, got 99999"),
    (["--rdzv-endpoint", "127.0.0.1:0"], "the port must be 1..65535, got 0"),
    (["--rdzv-endpoint", "no-such-host.invalid:29500"], "unknown host no-such-host.invalid"),
    (["--rdzv-endpoint", "203.0.113.7:29500"], "203.0.113.7 is not an address of this machine"),
    (["--timeout", "inf"], "argument --timeout: expected a finite number, got 'inf'"),
    (["--timeout", "nan"], "argument --timeout: expected a finite number, got 'nan'"),
    (["--bucket-mb", "-1"], "argument --bucket-mb: expected a number > 0, got '-1'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(bad, says, tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "kept.txt").write_text("earlier")
    assert main(["scale", *ARGS, *bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["kept.txt"] and (out / "kept.txt").read_text() == "earlier"


@pytest.mark.parametrize("nnodes", ["1", "2"])
def test_a_rendezvous_port_held_by_another_listener_is_refused_before_any_launch(nnodes, tmp_path, capsys):
    """On one node, or on the node that hosts the rendezvous of several, the port must be free."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        endpoint = f"127.0.0.1:{other.getsockname()[1]}"
        assert main(["scale", *ARGS, "--nnodes", nnodes, "--rdzv-endpoint", endpoint,
                     "--out", str(tmp_path / "reports")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"rvbench scale: error: --rdzv-endpoint {endpoint}: the port is held by another listener; "
                    "give a free port")
    assert not (tmp_path / "reports").exists()


def test_an_unknown_arch_names_the_valid_ones(tmp_path, capsys):
    assert main(["scale", "resnet9", "--device", "cpu", "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "resnet9" in err and "resnet18" in err and err.count("\n") == 1
    assert not (tmp_path / "reports").exists()


def test_link_bandwidth_units_and_the_ring_bound():
    assert parse_link("450GB/s").gbytes_s == 450.0
    assert parse_link("400Gb/s").gbytes_s == 50.0  # bits
    assert parse_link("NVLink4") == LINKS["nvlink4"]
    for bad in ("400", "fast", "0GB/s", "10 GiB/s"):
        with pytest.raises(UsageError):
            parse_link(bad)
    link = Link("test", 100.0)
    assert ring_allreduce_s(1e9, 1, link) == 0.0
    assert ring_allreduce_s(1e9, 2, link) == pytest.approx(0.01)  # 2 * 1/2 * 1 GB at 100 GB/s
    assert ring_allreduce_s(1e9, 8, link) == pytest.approx(2 * 7 / 8 * 0.01)


def test_interval_arithmetic_of_the_communication_share():
    assert union([(5, 7), (0, 2), (1, 3)]) == [(0, 3), (5, 7)]
    assert total([(0, 2), (1, 3), (1, 2)]) == 3
    assert overlap([(0, 10)], [(2, 4), (3, 5), (8, 12)]) == 5  # 2..5 and 8..10
    assert overlap([(0, 1)], [(2, 3)]) == 0


class _Event:
    """A raw Kineto event (`_KinetoEvent`) as split_events reads it, of a Kineto activity type;
    `typed=False` is a torch without `activity_type()` (before 2.13), whose events only flag annotations."""

    def __init__(self, name: str, start: int, end: int, activity: str = "kernel", typed: bool = True):
        self._name, self._start, self._end, self._activity = name, start, end, activity
        if typed:
            self.activity_type = lambda: activity

    def name(self) -> str:
        return self._name

    def device_type(self) -> DeviceType:
        return DeviceType.CPU if self._activity in ("cpu_op", "user_annotation") else DeviceType.CUDA

    def start_ns(self) -> int:
        return self._start

    def duration_ns(self) -> int:
        return self._end - self._start

    def start_thread_id(self) -> int:
        return 1

    def is_user_annotation(self) -> bool:
        return self._activity in ("gpu_user_annotation", "user_annotation")


def _nccl_window(typed: bool = True) -> list:
    """One DDP step on a GPU: the forward's and backward's kernels, an NCCL all-reduce half under the
    backward's last kernel, an optimizer kernel; GPU user annotations spanning them, gaps included."""
    spans = [
        ("DDP.forward", 0, 40, "gpu_user_annotation"), ("ProfilerStep#3", 0, 100, "gpu_user_annotation"),
        ("aten::convolution", 0, 5, "cpu_op"),  # the host side is not the GPU's work
        ("sm90_xmma_fprop", 0, 10, "kernel"), ("Memcpy DtoD (Device -> Device)", 10, 12, "gpu_memcpy"),
        ("sm90_xmma_dgrad", 40, 60, "kernel"), ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 50, 70, "kernel"),
        ("Optimizer.step#SGD.step", 60, 100, "gpu_user_annotation"), ("multi_tensor_apply_kernel", 90, 95, "kernel"),
    ]
    return [_Event(*span, typed=typed) for span in spans]


def test_nccl_kernels_are_communication_and_annotations_not_compute():
    comm, compute = split_events(_nccl_window(), on_cuda=True)
    assert comm == [(50, 70)]
    assert sorted(compute) == [(0, 10), (10, 12), (40, 60), (90, 95)]  # kernels and the copy; no span
    # Half the all-reduce runs under the dgrad kernel; the annotations around it (60..100) would
    # have hidden all of it.
    assert overlap(comm, compute) / total(comm) == 0.5


def test_annotations_are_left_out_on_a_torch_without_activity_types():
    comm, compute = split_events(_nccl_window(typed=False), on_cuda=True)
    assert comm == [(50, 70)]
    assert sorted(compute) == [(0, 10), (10, 12), (40, 60), (90, 95)]


def test_the_ddp_window_is_profiled_by_kineto_with_cuda_kernels(monkeypatch):
    """`use_device="cuda"` alone is torch's legacy GPU fallback, which records no kernel; what the
    rank asks for is Kineto with CUPTI's CUDA activity (torch's own reading of the options, with
    CUDA faked available), and the NCCL kernels of its window are counted."""
    from torch.autograd import profiler
    from torch.profiler import ProfilerActivity

    monkeypatch.setattr(profiler.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(profiler, "_supported_activities", lambda: {ProfilerActivity.CPU, ProfilerActivity.CUDA})
    chosen = profiler.profile(**profiler_options(on_cuda=True))
    assert (chosen.profiler_kind, chosen.kineto_activities) == (ProfilerState.KINETO, {ProfilerActivity.CUDA})
    assert profiler.profile(use_device="cuda").profiler_kind == ProfilerState.KINETO_GPU_FALLBACK
    assert profiler_options(on_cuda=False) == {}  # gloo: CPU operators and collectives, the default

    asked = []

    class Recorded:
        def __init__(self, **options):
            asked.append(options)
            self.kineto_results = SimpleNamespace(events=_nccl_window)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(profiler, "profile", Recorded)
    monkeypatch.setattr(ddp_rank, "synchronize", lambda device: None)
    figures = ddp_rank._profile(lambda: None, ddp_rank.torch.device("cuda", 0), steps=1)
    assert asked == [profiler_options(on_cuda=True)]
    assert figures["comm_ms"] == pytest.approx(20e-6)  # 20 ns of all-reduce in the one step
    assert figures["comm_overlap"] == 0.5


def test_ddp_gpu_check_rule():
    ok = {"status": "ok", "message": "", "throughput": 900.0, "step_ms_p50": 71.0, "allreduce_bytes": 102.0 * 2**20,
          "grad_bytes": 102.0 * 2**20}
    passed, figure = judge_ddp(ok)
    assert passed and "102.0 MiB per step = the gradients" in figure
    assert judge_ddp({**ok, "allreduce_bytes": 51.0 * 2**20}) == (
        False, f"all-reduced {51 * 2**20} B per step, gradients {102 * 2**20} B")
    assert judge_ddp({**ok, "status": "error", "message": "world size 1: rank 0 failed: X\ntrace"}) == (
        False, "error: world size 1: rank 0 failed: X")


def test_a_world_size_carries_its_slowest_ranks_interval_and_the_throughput_interval_from_it():
    """figures(): the median's interval is the slowest rank's ends; rel_ci and the throughput's interval
    follow from the row's own p50 and ends, as a sweep row's do (bench.measure.timing.summarize)."""
    from bench.columns import names
    from bench.config.cell import Cell
    from bench.execute.ddp import DdpOptions
    from bench.runner.scale import ScaleSpec, figures

    def rank(i: int, p50: float, low: float, high: float) -> dict:
        base = dict.fromkeys(names("timing"), 1.0)
        return {**base, "step_ms_p50": p50, "step_ms_p50_ci_low": low, "step_ms_p50_ci_high": high,
                "noisy": False, "n_iters": 20, "timed_s": 1.0, "warmup_iters": 2, "params_total": 10,
                "params_trainable": 10, "mem_peak_alloc_mb": None, "mem_peak_reserved_mb": None,
                "mem_activation_mb": None, "mem_rss_delta_mb": 5.0, "mem_weights_mb": 1.0, "mem_note": "rss",
                "threads": 1, "rank": i, "host": "h", "comm_ms": 1.0, "comm_share": 0.1, "comm_overlap": 0.5,
                "allreduce_bytes": 100, "grad_bytes": 100}

    spec = ScaleSpec(Cell("resnet18", "rv", 4, 32), DdpOptions(), "gloo", 2, 20, 0, 60.0, None)
    row = figures(spec, 2, [rank(0, 10.0, 9.5, 10.4), rank(1, 12.0, 11.0, 12.6)])
    assert (row["step_ms_p50"], row["step_ms_p50_ci_low"], row["step_ms_p50_ci_high"]) == (12.0, 11.0, 12.6)
    assert row["rel_ci"] == pytest.approx(1.0 / 12.0)
    assert row["throughput_ci_low"] == pytest.approx(8 / 0.0126) and row["throughput_ci_high"] == pytest.approx(8 / 0.011)
    assert row["throughput_ci_low"] < row["throughput"] < row["throughput_ci_high"]
