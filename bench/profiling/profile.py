"""Profile one cell: where the device time and memory of a step go.

One warm-up step (compilation, autotuning) runs before the profiler starts; the rest of the
warm-up runs inside the profiler's warm-up phase, where CUPTI is on but nothing is kept, so the
CUDA graphs of reduce-overhead and max-autotune cells are recorded while CUPTI watches (kernels of
a graph recorded before the profiler started may be missing from its replays). Then torch.profiler
records a few steps (CPU activity, plus CUDA kernels on a GPU, with input shapes). From those events:
- device time per operator category (bench.profiling.opcats): self CPU time of each op on the CPU, kernel
  time on CUDA (a kernel the name rules cannot place takes the category of the op launching it);
  user ranges (ProfilerStep, our module ranges, and their GPU-side spans) are not operators and are
  left out. If CUDA recorded no kernel at all (CUDA graph replays can be opaque to CUPTI), there
  are no categories or top kernels and `categories_note` says why; the step time still stands;
- the top operators (CPU) or kernels (CUDA) by that time;
- forward time of each canonical module group (bench.models.groups): forward hooks wrap each of the
  group's modules in a `module::<group>` profiler range, and the same time as the categories (an
  op's self CPU time, or a kernel's time, charged to the ranges around the op that launched it) is
  summed per group, each op or kernel once per group however the ranges nest, and once in
  `modules_ms_total` (so it can be checked against `busy_ms`, which also counts work outside any
  group, and backward). Joined with the group's FLOPs (bench.counting.flops) into achieved
  TFLOP/s. Under torch.compile the graph fuses across module boundaries, so there is no
  per-module time then;
- peak memory per phase (forward / backward / optimizer) on CUDA, read from the caching allocator
  by hooks on the model and the optimizer around one step after the profile, and optionally a
  memory snapshot;
- the step's arithmetic intensity and achieved TFLOP/s, on the device's roofline (bench.profiling.roofline).

Times are per step (profiled total / steps). Step time is the median of the profiled steps, each
synchronised and timed alone, with CUDA events on a GPU and perf_counter on the CPU: it includes
the profiler's overhead on the step, not its bookkeeping between steps. (It is not read from the
ProfilerStep events: on CUDA, torch also emits a GPU-side span of that name with no CPU time.)
Writes trace.json.gz (open it in Perfetto or chrome://tracing) and profile.json (the returned dict)
into out_dir.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from bench.config.cell import Cell
from bench.config.sweep import TimingConfig
from bench.counting.flops import module_flops
from bench.errors import UsageError
from bench.execute.prepare import BuiltCell, check_cell, flops_per_image, prepared_cell
from bench.measure.memory import MB
from bench.measure.timing import synchronize, warm_up
from bench.models.groups import module_groups
from bench.profiling.opcats import CATEGORIES, classify
from bench.profiling.roofline import BYTES_METHOD, count_bytes, place, point

# Kineto's log threshold for a CPU profile (libkineto's severities: VERBOSE 0 ... ERROR 4, USDT 5):
# on a CPU nothing it logs is for the user ("gpuGetDeviceCount failed" where there is no GPU, its
# start and stop markers), so it is silenced. It reads KINETO_LOG_LEVEL when a process first
# profiles; one the user set is kept, and a CUDA profile keeps Kineto's errors (CUPTI's).
_KINETO_QUIET = "6"

SCHEMA_VERSION = 2  # 2: step_ms timed per step, categories_note, modules_ms_total, modules in op time
TOP_N = 20
TRACE_NAME = "trace.json.gz"
SNAPSHOT_NAME = "memory_snapshot.pickle"
RANGE_PREFIX = "module::"
# Warm-up in the profiler's warm-up phase, after the first (compiling) step: CUDA graph trees record
# a graph on its second call and replay it from the third; the allocator settles.
_WARMUP = TimingConfig(warmup_iters=3, warmup_s=0.0)
_MODULES_NOTE = (
    "forward time only (backward is not split by module), in the categories' time source; GFLOP are "
    "forward FLOPs per step (per image x batch size), so achieved TFLOP/s = GFLOP / forward ms"
)
_COMPILED_NOTE = "no per-module time under torch.compile: the compiled graph fuses across module boundaries"
_NO_ROOFLINE_NOTE = "no roofline: the device (or its peak for this precision) is not in bench.hardware.gpus"
_CPU_ROOFLINE_NOTE = "no roofline on CPU: bench.hardware.gpus has peaks for GPUs only"
_CPU_MEMORY_NOTE = "no per-phase peaks on CPU: its allocator keeps no peak statistics (see mem_rss_delta_mb)"
_NO_KERNELS_NOTE = (
    "no categories or top kernels: CUDA recorded no kernel time in the profiled steps (CUDA graph "
    "replays can be opaque to CUPTI); step_ms is still timed with CUDA events"
)


def _group_ranges(groups: dict[str, list[nn.Module]]) -> list:
    """Wrap each module of each group in a `module::<group>` profiler range (a group's time is the op
    time under its modules' ranges, as its FLOPs are the sum of its modules' FLOPs in bench.counting.flops)."""
    handles = []
    for name, modules in groups.items():
        for module in modules:
            rng = record_function(RANGE_PREFIX + name)

            # Hooks must return None: a value returned would replace the module's input or output.
            def open_range(*_: object, r: record_function = rng) -> None:
                r.__enter__()

            def close_range(*_: object, r: record_function = rng) -> None:
                r.__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(open_range))
            handles.append(module.register_forward_hook(close_range))
    return handles


def _phase_memory(built: BuiltCell, device: torch.device) -> dict:
    """Peak allocated MB in each phase of one CUDA step, via hooks at the phase boundaries."""
    peaks: dict[str, float | None] = {"forward_mb": None, "backward_mb": None, "optimizer_mb": None}

    def close(phase: str) -> None:
        torch.cuda.synchronize(device)
        peaks[phase] = torch.cuda.max_memory_allocated(device) / MB
        torch.cuda.reset_peak_memory_stats(device)

    def open_forward(*_: object) -> None:
        torch.cuda.reset_peak_memory_stats(device)

    handles = [
        built.runnable.register_forward_pre_hook(open_forward),
        built.runnable.register_forward_hook(lambda *_: close("forward_mb")),
    ]
    if built.optimizer is not None:
        # Backward ends where the optimizer step begins (the loss is computed in the backward phase).
        handles.append(built.optimizer.register_step_pre_hook(lambda *_: close("backward_mb")))
        handles.append(built.optimizer.register_step_post_hook(lambda *_: close("optimizer_mb")))
    try:
        built.step()
        synchronize(device)
    finally:
        for handle in handles:
            handle.remove()
    return {**peaks, "note": "CUDA caching allocator: peak allocated (weights included) in each phase of one step"}


def _memory_snapshot(built: BuiltCell, device: torch.device, path: Path) -> None:
    """Record the allocator history over one step and dump it (open at pytorch.org/memory_viz)."""
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        built.step()
        synchronize(device)
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


_USER_SCOPE = 7  # at::RecordScope::USER_SCOPE: record_function ranges, ProfilerStep, Optimizer.step


def _range_names(events: list) -> set[str]:
    """Names of user ranges (not operators); on CUDA their GPU-side spans carry the same names."""
    return {e.name for e in events if e.device_type == DeviceType.CPU
            and (e.scope == _USER_SCOPE or getattr(e, "is_user_annotation", False))}


def _is_range(event: object, range_names: set[str]) -> bool:
    """Whether an event (or a kernel attached to one) is a user range or its GPU-side span, not an
    operator. torch names both sides of a profiler step "ProfilerStep*" (the trace: "ProfilerStep#N")."""
    return (bool(getattr(event, "is_user_annotation", False)) or event.name in range_names
            or event.name.startswith("ProfilerStep"))


def _op_times(events: list, on_cuda: bool) -> dict[str, list]:
    """Operator (CPU) or kernel (CUDA) name -> [category, total us, calls]."""
    table: dict[str, list] = {}
    ranges = _range_names(events)
    if on_cuda:
        launcher = {k.name: e.name for e in events if e.device_type == DeviceType.CPU for k in e.kernels}
        timed = [(e, e.device_time_total) for e in events
                 if e.device_type == DeviceType.CUDA and not _is_range(e, ranges)]
    else:
        launcher = {}
        timed = [(e, e.self_cpu_time_total) for e in events
                 if e.device_type == DeviceType.CPU and not e.is_async and not _is_range(e, ranges)]
    for event, us in timed:
        row = table.get(event.name)
        if row is None:
            category = classify(event.name)
            if category == "other" and event.name in launcher:
                category = classify(launcher[event.name])
            row = table[event.name] = [category, 0.0, 0]
        row[1] += us
        row[2] += 1
    return table


def _categories(table: dict[str, list], steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """(share in percent, ms per step) for every category; shares sum to 100 (the table has time)."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for category, us, _ in table.values():
        totals[category] += us
    grand = sum(totals.values())
    shares = {cat: 100.0 * us / grand for cat, us in totals.items()}
    return shares, {cat: us / 1000.0 / steps for cat, us in totals.items()}


def _top_ops(table: dict[str, list], steps: int) -> list[dict]:
    grand = sum(us for _, us, _ in table.values())
    ranked = sorted(table.items(), key=lambda item: -item[1][1])[:TOP_N]
    return [
        {"name": name, "category": cat, "ms": us / 1000.0 / steps, "pct": 100.0 * us / grand,
         "calls_per_step": calls / steps}
        for name, (cat, us, calls) in ranked
    ]


def _breakdown(events: list, on_cuda: bool, steps: int) -> dict:
    """The summary's operator fields: time source, busy ms per step, category shares and ms, top
    operators, and `categories_note`, set when CUDA recorded no kernel and the rest is empty."""
    table = _op_times(events, on_cuda)
    source = "kernel time (CUDA)" if on_cuda else "self CPU time"
    if sum(us for _, us, _ in table.values()) <= 0:
        if not on_cuda:
            raise RuntimeError("the profiler recorded no operator time; nothing to break down")
        return {"time_source": source, "busy_ms": None, "categories": {}, "category_ms": {}, "top_ops": [],
                "categories_note": _NO_KERNELS_NOTE}
    shares, category_ms = _categories(table, steps)
    return {"time_source": source, "busy_ms": sum(category_ms.values()), "categories": shares,
            "category_ms": category_ms, "top_ops": _top_ops(table, steps), "categories_note": None}


def _module_us(events: list, on_cuda: bool) -> tuple[dict[str, float], float]:
    """(us under each group's ranges, us under any group range) over the profiled steps.

    Each op's own time, the categories' time (its kernels on CUDA: a kernel belongs to the op that
    launched it; its self CPU time on the CPU), is charged once to every group with a range around
    the op, and once to the total. Summing the ranges' inclusive times instead (device_time_total
    includes the children's kernels) would count a range nested in a range of its own group twice,
    and, in the total, a range nested in another group's.
    """
    ranges = _range_names(events)
    per_group: dict[str, float] = defaultdict(float)
    total = 0.0
    for event in events:
        if event.device_type != DeviceType.CPU or event.is_async:
            continue
        if on_cuda:  # a GPU-side span of a range is not a kernel, should torch attach it as one
            us = sum(k.duration for k in event.kernels if not _is_range(k, ranges))
        else:
            us = 0.0 if _is_range(event, ranges) else event.self_cpu_time_total
        if not us:
            continue
        groups = set()
        node = event
        while node is not None:
            if node.name.startswith(RANGE_PREFIX):
                groups.add(node.name[len(RANGE_PREFIX):])
            node = node.cpu_parent
        for group in groups:
            per_group[group] += us
        total += us if groups else 0.0
    return per_group, total


def _module_rows(group_us: dict[str, float], flops: dict[str, int], batch: int, steps: int) -> list[dict]:
    """Forward ms per step of each group (`_module_us`), joined with the group's forward FLOPs: per
    image (`flops_per_image`) and per step, i.e. times the batch (`gflops`, in GFLOP)."""
    rows = []
    for group, per_image in flops.items():
        ms = group_us[group] / 1000.0 / steps if group in group_us else None
        gflops = per_image * batch / 1e9
        rows.append({
            "group": group,
            "ms": ms,
            "flops_per_image": per_image,
            "gflops": gflops,
            "achieved_tflops": gflops / ms if ms else None,
        })
    return rows


def _timed_step(step: Callable[[], object], device: torch.device,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds of one step run alone and synchronised: between CUDA events recorded around it
    on the device's current stream (from the step's first launch to its last kernel), or by `clock`
    on the CPU."""
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        step()
        end.record(stream)
        synchronize(device)
        return begin.elapsed_time(end)
    start = clock()
    step()
    return (clock() - start) * 1e3


def _record(step: Callable[[], object], device: torch.device, steps: int,
            clock: Callable[[], float] = time.perf_counter) -> tuple[profile, list[float]]:
    """Warm up in the profiler's warm-up phase (CUPTI on, nothing kept), then profile `steps` steps.

    Returns the profiler and each profiled step's time in ms (`_timed_step`: the step alone, not
    the profiler's bookkeeping between steps). `clock` (CPU only) is injectable for tests.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cpu":
        os.environ.setdefault("KINETO_LOG_LEVEL", _KINETO_QUIET)
    samples = []
    with profile(activities=activities, record_shapes=True,
                 schedule=schedule(wait=0, warmup=1, active=steps, repeat=1)) as prof:
        warm_up(step, device, _WARMUP)
        prof.step()
        for _ in range(steps):
            samples.append(_timed_step(step, device, clock))
            prof.step()
    return prof, samples


def _profile(built: BuiltCell, out_dir: Path, steps: int, memory_snapshot: bool) -> dict:
    cell, device = built.cell, built.device
    on_cuda = device.type == "cuda"
    # Compilation and autotuning happen here, before the profiler: their kernels are not profiled.
    built.step()
    synchronize(device)
    eager = cell.compile == "none"
    handles = _group_ranges(module_groups(built.model, built.entry.family, cell.impl)) if eager else []
    try:
        prof, samples = _record(built.step, device, steps)
    finally:
        for handle in handles:
            handle.remove()
    prof.export_chrome_trace(str(out_dir / TRACE_NAME))
    memory = _phase_memory(built, device) if on_cuda else {
        "forward_mb": None, "backward_mb": None, "optimizer_mb": None, "note": _CPU_MEMORY_NOTE}
    memory["snapshot"] = None
    if memory_snapshot:
        _memory_snapshot(built, device, out_dir / SNAPSHOT_NAME)
        memory["snapshot"] = SNAPSHOT_NAME
    bytes_per_step = count_bytes(built.eager_step())
    synchronize(device)

    events = list(prof.events())
    step_ms = statistics.median(samples)
    pt = point(flops_per_image(cell)[1] * cell.batch_size, bytes_per_step, step_ms / 1000.0)
    gpu_name = torch.cuda.get_device_name(device) if on_cuda else None
    roofline = place(pt, gpu_name, cell.precision)
    group_us, modules_us = _module_us(events, on_cuda) if eager else ({}, 0.0)
    group_flops = module_flops(built.model, cell.arch, cell.impl, cell.image_size)
    return {
        "schema_version": SCHEMA_VERSION,
        **cell.config(),
        "cell_id": cell.cell_id,
        "label": cell.label(),
        "device_name": gpu_name or "cpu",
        "torch": torch.__version__,
        "steps": steps,
        "step_ms": step_ms,
        **_breakdown(events, on_cuda, steps),
        "modules": _module_rows(group_us, group_flops, cell.batch_size, steps) if eager else [],
        "modules_ms_total": modules_us / 1000.0 / steps if eager else None,
        "modules_note": _MODULES_NOTE if eager else _COMPILED_NOTE,
        "memory": memory,
        **pt,
        "bytes_method": BYTES_METHOD,
        "roofline": roofline,
        "roofline_note": None if roofline else (_NO_ROOFLINE_NOTE if on_cuda else _CPU_ROOFLINE_NOTE),
        "trace": TRACE_NAME,
    }


def check_profile(cell: Cell, steps: int, memory_snapshot: bool) -> None:
    """UsageError for an invalid cell, a device that is not there, a bad step count, or a memory
    snapshot off CUDA: everything that can refuse a profile, so callers check before writing."""
    check_cell(cell)
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if memory_snapshot and not cell.device.startswith("cuda"):
        raise UsageError("--memory-snapshot needs a CUDA device (the snapshot records the CUDA allocator)")


def profile_cell(cell: Cell, out_dir: Path, steps: int = 5, memory_snapshot: bool = False) -> dict:
    """Profile `steps` steps of one cell after warm-up; write trace + profile.json; return the summary.

    Raises UsageError (check_profile) before anything is written.
    """
    check_profile(cell, steps, memory_snapshot)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with prepared_cell(cell) as built:
        summary = _profile(built, out_dir, steps, memory_snapshot)
    (out_dir / "profile.json").write_text(json.dumps(summary, indent=2))
    return summary
