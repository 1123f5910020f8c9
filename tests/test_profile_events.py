"""The profile's accounting on synthetic profiler events, and its step timing loop.

No GPU is needed: the CUDA cases are built from torch's own FunctionEvent, laid out as torch lays
out a CUDA profile (a CPU-side range per record_function, a GPU-side span of the same name with no
CPU time, kernels as CUDA events and attached to the CPU op that launched them), and EventList
builds the CPU tree as it does for a real profile. They are synthetic because CUDA kernels need a
GPU this machine lacks. The CPU cases need no fake, but are built the same way so that each test
states its events exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent
from torch.profiler import record_function

from bench.profiling.profile import _WARMUP, _breakdown, _module_rows, _module_us, _record

USER_SCOPE = 7  # at::RecordScope::USER_SCOPE, what record_function ranges and ProfilerStep carry
CPU_THREAD, GPU_STREAM = 1, 7


def _range(ids: Iterator[int], name: str, start: float, end: float) -> FunctionEvent:
    """The CPU side of a record_function range (or of a profiler step)."""
    return FunctionEvent(next(ids), name, CPU_THREAD, start, end, scope=USER_SCOPE, use_device="cuda",
                         is_user_annotation=True)


def _gpu_span(ids: Iterator[int], name: str, start: float, end: float) -> FunctionEvent:
    """The GPU-side span kineto adds for a range: a CUDA event with no CPU time."""
    return FunctionEvent(next(ids), name, GPU_STREAM, start, end, use_device="cuda", device_type=DeviceType.CUDA,
                         is_user_annotation=True)


def _op(ids: Iterator[int], name: str, start: float, end: float, kernels: tuple[tuple[str, float], ...] = ()) -> list:
    """An aten op on the CPU and the kernels it launched: attached to it and as CUDA events."""
    op = FunctionEvent(next(ids), name, CPU_THREAD, start, end, use_device="cuda")
    events = [op]
    at = end
    for kernel, us in kernels:
        op.append_kernel(kernel, 0, us)
        events.append(FunctionEvent(next(ids), kernel, GPU_STREAM, at, at + us, use_device="cuda",
                                    device_type=DeviceType.CUDA))
        at += us
    return events


def _tree(events: list) -> list:
    built = EventList(events, use_device="cuda")
    built._build_tree()
    return list(built)


def _nested_cuda_step() -> list:
    """One CUDA step whose module ranges nest: blocks.0 inside blocks.0 (a module of a group called
    from another module of it), head inside blocks.1 (one group's module called from another's).
    Kernels: mm 30 and add 5 under blocks.0, addmm 10 under head (so under blocks.1 too), gelu 4
    under blocks.1 alone, cat 7 outside every group. The outer blocks.0 range also carries its own
    GPU-side span as a kernel, as a torch that linked the span to its range would."""
    ids = itertools.count(1)
    outer = _range(ids, "module::blocks.0", 0, 100)
    outer.append_kernel("module::blocks.0", 0, 80)
    return _tree([
        _range(ids, "ProfilerStep*", 0, 300),
        _gpu_span(ids, "ProfilerStep*", 300, 400),
        outer,
        _gpu_span(ids, "module::blocks.0", 300, 380),
        _range(ids, "module::blocks.0", 10, 50),
        *_op(ids, "aten::mm", 20, 40, (("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 30),)),
        *_op(ids, "aten::add", 60, 70, (("vectorized_elementwise_kernel<4, CUDAFunctor_add<float>>", 5),)),
        _range(ids, "module::blocks.1", 110, 200),
        _range(ids, "module::head", 120, 180),
        *_op(ids, "aten::addmm", 130, 170, (("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", 10),)),
        *_op(ids, "aten::gelu", 185, 195, (("vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>", 4),)),
        *_op(ids, "aten::cat", 210, 220, (("CatArrayBatchedCopy_contig<OpaqueType<2u>, unsigned int, 4>", 7),)),
    ])


def test_module_time_counts_each_kernel_once_however_ranges_nest() -> None:
    events = _nested_cuda_step()
    outer_blocks0 = [e for e in events if e.name == "module::blocks.0" and e.device_type == DeviceType.CPU]
    # What summing the ranges' device_time_total would give: nested ranges count the mm kernel twice.
    assert sum(e.device_time_total for e in outer_blocks0) == 80 + 30 + 5 + 30
    per_group, total = _module_us(events, on_cuda=True)
    assert dict(per_group) == {"blocks.0": 35, "blocks.1": 14, "head": 10}
    assert total == 49  # head's addmm is inside blocks.1: once in the total
    busy = _breakdown(events, on_cuda=True, steps=1)["busy_ms"]
    assert busy == pytest.approx((30 + 5 + 10 + 4 + 7) / 1000)  # kernels only: no GPU-side span
    assert total / 1000 <= busy


def test_module_time_on_cpu_is_self_time_of_the_ops_under_the_ranges() -> None:
    ids = itertools.count(1)
    events = _tree([
        _range(ids, "ProfilerStep*", 0, 200),
        _range(ids, "module::stem", 0, 100),
        _range(ids, "module::stem", 10, 60),
        *_op(ids, "aten::convolution", 15, 55),
        *_op(ids, "aten::relu", 70, 80),
        *_op(ids, "aten::add", 150, 160),
    ])
    per_group, total = _module_us(events, on_cuda=False)
    assert dict(per_group) == {"stem": 40 + 10} and total == 50
    breakdown = _breakdown(events, on_cuda=False, steps=1)
    assert breakdown["busy_ms"] == pytest.approx(0.060)  # the three ops' self time, no range's
    assert breakdown["categories_note"] is None


def test_module_rows_join_flops_and_leave_untimed_groups_empty() -> None:
    rows = _module_rows({"stem": 2000.0}, {"stem": 10**9, "head": 10**6}, batch=4, steps=2)
    assert rows[0] == {"group": "stem", "ms": 1.0, "flops_per_image": 10**9, "gflops": 4.0, "achieved_tflops": 4.0}
    assert rows[1]["ms"] is None and rows[1]["achieved_tflops"] is None


def test_categories_count_kernels_not_gpu_spans() -> None:
    breakdown = _breakdown(_nested_cuda_step(), on_cuda=True, steps=1)
    assert breakdown["time_source"] == "kernel time (CUDA)"
    assert {op["name"][:12] for op in breakdown["top_ops"]} == {
        "sm90_xmma_ge", "vectorized_e", "nvjet_tst_12", "CatArrayBatc"}
    assert breakdown["category_ms"]["matmul"] == pytest.approx(0.040)
    assert breakdown["category_ms"]["memory"] == pytest.approx(0.007)
    assert sum(breakdown["categories"].values()) == pytest.approx(100.0)


def test_cuda_profile_without_kernels_falls_back_with_a_note() -> None:
    """A CUDA-graph replay CUPTI did not see: the launch and the ranges are there, no kernel is."""
    ids = itertools.count(1)
    events = _tree([
        _range(ids, "ProfilerStep*", 0, 100),
        _gpu_span(ids, "ProfilerStep*", 100, 180),
        _range(ids, "CompiledFxGraph", 5, 90),
        *_op(ids, "cudaGraphLaunch", 10, 20),
    ])
    breakdown = _breakdown(events, on_cuda=True, steps=1)
    assert breakdown["busy_ms"] is None
    assert breakdown["categories"] == {} and breakdown["category_ms"] == {} and breakdown["top_ops"] == []
    assert "CUDA graph" in breakdown["categories_note"]
    with pytest.raises(RuntimeError, match="no operator time"):
        _breakdown(_tree([_range(itertools.count(1), "ProfilerStep*", 0, 100)]), on_cuda=False, steps=1)


def test_record_warms_up_unrecorded_and_times_only_the_steps() -> None:
    """A real CPU profiler and a fake clock that only the step advances, by 1, 2, 3... ms on its
    1st, 2nd, 3rd... call: the samples are the profiled steps' own times, after a warm-up that is
    neither timed nor recorded."""
    now = [0.0]
    calls = []

    def step() -> None:
        calls.append(1)
        with record_function("test::step"):
            torch.ones(2).add_(1)
        now[0] += len(calls) / 1000

    steps = 3
    prof, samples = _record(step, torch.device("cpu"), steps, clock=lambda: now[0])
    warmup = _WARMUP.warmup_iters
    assert len(calls) == warmup + steps
    assert samples == pytest.approx([float(warmup + i) for i in range(1, steps + 1)])
    events = list(prof.events())
    assert sum(e.name == "test::step" for e in events) == steps
    assert sum(e.name.startswith("ProfilerStep") for e in events) == steps
