"""Communication against compute in a profiled window of data-parallel training steps.

What counts as communication and as compute, from the profiler's raw Kineto events (the profile
`profiler_options` configures):
- CUDA (NCCL): the device's work, recorded by CUPTI: a kernel whose name contains "nccl" is
  communication (all-reduce of gradient buckets, broadcast of buffers); every other kernel, memcpy
  and memset is compute (work of the step the GPU does meanwhile: a copy into or out of a gradient
  bucket, a zeroing, is as real as a kernel). GPU user annotations (Kineto's "gpu_user_annotation":
  DDP.forward, Optimizer.step#SGD.step, ProfilerStep#N) are CUDA events too, but they are spans
  over kernels, gaps included, not work: counted as compute they would cover the idle time between
  kernels and inflate the share of communication hidden under compute.
- CPU (gloo): gloo runs each collective on its own thread, recorded as "gloo:<collective>"; those
  are communication, and the `aten::` operators of every other thread are compute.

Each kind's time is the union of its intervals (nested or parallel events count once), and the
overlap is the time both run at once: the share of communication hidden under compute. What is not
hidden is exposed: the step waits for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch.autograd import DeviceType

Interval = tuple[float, float]
COMM_CPU_PREFIX = "gloo:"
COMM_KERNEL_MARK = "nccl"
COMPUTE_CPU_PREFIX = "aten::"
# Kineto's names (libkineto's ActivityType) for the GPU's own work: kernels, copies and fills.
DEVICE_WORK = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


def profiler_options(on_cuda: bool) -> dict:
    """Arguments of torch.autograd.profiler.profile for a window `split_events` reads.

    On CUDA: Kineto with CUPTI's device activity, and without CPU operators. `use_device="cuda"`
    alone selects torch's legacy GPU fallback (ProfilerState.KINETO_GPU_FALLBACK: CUDA events around
    each CPU op), which records no kernel, so no NCCL kernel either; `use_kineto=True` makes it
    Kineto proper. The split reads only device events there, and recording some 700 CPU ops per step
    would slow the launches and so shift communication against compute (torch.profiler's
    `activities=[ProfilerActivity.CUDA]` is the same configuration). On the CPU: its operators and
    gloo's collectives (the profiler's default)."""
    return {"use_device": "cuda", "use_kineto": True, "use_cpu": False} if on_cuda else {}


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering exactly the given ones."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def total(intervals: Iterable[Interval]) -> float:
    """Length covered by the intervals (each instant once)."""
    return sum(e - s for s, e in union(intervals))


def overlap(a: Iterable[Interval], b: Iterable[Interval]) -> float:
    """Length covered by both sets of intervals at once."""
    a, b = union(a), union(b)
    i = j = 0
    length = 0.0
    while i < len(a) and j < len(b):
        length += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return length


def split_events(events: Iterable, on_cuda: bool) -> tuple[list[Interval], list[Interval]]:
    """(communication, compute) intervals in nanoseconds of the profiler's raw Kineto events
    (`profile.kineto_results.events()`: parsing them into FunctionEvents would take seconds per step)."""
    events = list(events)
    comm, compute = [], []
    if on_cuda:
        for e in events:
            if e.device_type() == DeviceType.CUDA and _is_device_work(e):
                (comm if COMM_KERNEL_MARK in e.name().lower() else compute).append(_span(e))
        return comm, compute
    comm_threads = {e.start_thread_id() for e in events if e.name().startswith(COMM_CPU_PREFIX)}
    for e in events:
        if e.name().startswith(COMM_CPU_PREFIX):
            comm.append(_span(e))
        elif e.name().startswith(COMPUTE_CPU_PREFIX) and e.start_thread_id() not in comm_threads:
            compute.append(_span(e))
    return comm, compute


def _is_device_work(event) -> bool:
    """Whether a CUDA event is work the GPU did (`DEVICE_WORK`), not a GPU user annotation.

    A recent torch (2.13 and 2.14 do) names each raw event's Kineto activity type (`activity_type()`);
    an older one, which the GPU machines may run, only flags annotations (`is_user_annotation()`, true
    for the GPU-side spans since 2.5): the other CUDA events it records by default are the kernels,
    memcpys and memsets."""
    activity_type = getattr(event, "activity_type", None)
    if activity_type is None:
        return not event.is_user_annotation()
    return activity_type() in DEVICE_WORK


def _span(event) -> Interval:
    return event.start_ns(), event.start_ns() + event.duration_ns()


def comm_stats(comm: list[Interval], compute: list[Interval], window_ns: float, steps: int) -> dict:
    """Per-step communication time, its share of the window's wall time and the share of it hidden
    under compute (None without communication), from intervals in nanoseconds."""
    comm_ns = total(comm)
    return {
        "comm_ms": comm_ns / steps / 1e6,
        "comm_share": comm_ns / window_ns if window_ns > 0 else None,
        "comm_overlap": overlap(comm, compute) / comm_ns if comm_ns > 0 else None,
    }
