"""Time a step callable on a device and summarise the per-iteration samples.

Warm-up runs until BOTH a minimum count and a minimum time are reached (cudnn autotuning,
allocator growth and lazy initialisation happen there). The timed loop then runs until BOTH
`min_iters` and `min_s` are reached, MLPerf's stopping rule, capped at `max_iters`.

CPU steps are timed with `time.perf_counter`. CUDA steps are timed with a `torch.cuda.Event`
pair per iteration recorded on the current stream, so the samples are device time and the host
does not synchronise every iteration. To keep the host from queueing work unboundedly ahead of
the GPU (which would make the host clock used by the stopping rule run far ahead of the device and
let the launch queue grow without bound), the host waits on the end event of the step `MAX_IN_FLIGHT` steps
back: at most that many steps are queued at any time, and the pipeline never drains in between.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch
from scipy.stats import binom

from bench.columns import values
from bench.config.sweep import TimingConfig

# Steps the host may run ahead of the GPU in the timed loop (see module docstring).
MAX_IN_FLIGHT = 4
# A cell is flagged noisy when IQR / median reaches this.
NOISY_IQR_RATIO = 0.10
# timm benchmark.py's defaults: --num-warm-iter 10, --num-bench-iter 40.
TIMM_WARMUP_ITERS, TIMM_ITERS = 10, 40


@dataclass(frozen=True)
class TimingResult:
    """Raw outcome of one timed loop."""

    samples_ms: list[float]  # per-iteration step times, in loop order
    timed_s: float  # wall time of the whole timed loop, including the final synchronisation
    warmup_iters: int  # warm-up iterations actually run


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on a CUDA device; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, cfg: TimingConfig,
            clock: Callable[[], float] = time.perf_counter) -> int:
    """Run `fn` until both `cfg.warmup_iters` and `cfg.warmup_s` are reached; return the count.

    Each warm-up step is synchronised: nothing is measured here, and it keeps the time budget honest.
    """
    start = clock()
    iters = 0
    while iters < cfg.warmup_iters or clock() - start < cfg.warmup_s:
        fn()
        synchronize(device)
        iters += 1
    return iters


def _enough(iters: int, elapsed_s: float, cfg: TimingConfig) -> bool:
    """MLPerf's rule: stop once both minima are met, or at the cap."""
    return iters >= cfg.max_iters or (iters >= cfg.min_iters and elapsed_s >= cfg.min_s)


def _time_cpu(fn: Callable[[], object], cfg: TimingConfig,
              clock: Callable[[], float]) -> tuple[list[float], float]:
    samples: list[float] = []
    start = clock()
    while not _enough(len(samples), clock() - start, cfg):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1e3)
    return samples, clock() - start


def _time_cuda(fn: Callable[[], object], device: torch.device, cfg: TimingConfig,
               clock: Callable[[], float]) -> tuple[list[float], float]:
    pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    with torch.cuda.device(device):
        start = clock()
        while not _enough(len(pairs), clock() - start, cfg):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            pairs.append((begin, end))
            if len(pairs) > MAX_IN_FLIGHT:
                pairs[-1 - MAX_IN_FLIGHT][1].synchronize()
        torch.cuda.synchronize(device)
        timed_s = clock() - start
    return [begin.elapsed_time(end) for begin, end in pairs], timed_s


def time_callable(fn: Callable[[], object], device: torch.device | str, cfg: TimingConfig,
                  around_timed: ContextManager[object] | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> TimingResult:
    """Warm up, then time `fn` per iteration on `device` (see the module docstring for the rules).

    `around_timed` is entered right before the timed loop and exited right after its final
    synchronisation: memory-peak resets and power sampling hook in there, so they cover exactly
    the timed iterations. `clock` is injectable so the stopping rule can be tested with a fake clock
    (CPU only; CUDA samples always come from events).
    """
    device = torch.device(device)
    warmup_iters = warm_up(fn, device, cfg, clock)
    with around_timed if around_timed is not None else contextlib.nullcontext():
        if device.type == "cuda":
            samples, timed_s = _time_cuda(fn, device, cfg, clock)
        else:
            samples, timed_s = _time_cpu(fn, cfg, clock)
    return TimingResult(samples_ms=samples, timed_s=timed_s, warmup_iters=warmup_iters)


def timm_loop_ms(fn: Callable[[], object], device: torch.device | str, iters: int = TIMM_ITERS,
                 warmup_iters: int = TIMM_WARMUP_ITERS) -> list[float]:
    """Per-step times as timm's benchmark.py takes them: each step on the host clock, from its launch
    to a synchronise after it (so the GPU starts every step idle and the launch latency is in the
    step), after `warmup_iters` such steps. timm reports their mean; `rvbench crosscheck` and
    gpu-check's timing check set it against our in-flight window of event-timed steps."""
    device = torch.device(device)
    times = []
    for i in range(warmup_iters + iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup_iters:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the median: the order statistics x(j), x(n-j+1) whose
    ranks a Binomial(n, 1/2) count keeps the median between with at least `level` probability (no
    assumption about the shape of the step-time distribution). None below 6 samples, too few for 95%.
    """
    n = samples.size
    j = int(binom.ppf((1 - level) / 2, n, 0.5))  # P(Binomial < j) < (1 - level) / 2
    if j < 1:
        return None
    ordered = np.sort(samples)
    return float(ordered[j - 1]), float(ordered[n - j])


def summarize(samples_ms: list[float], batch_size: int, timed_s: float | None = None) -> dict:
    """Statistics of per-step samples as results-row columns.

    Percentiles interpolate linearly between order statistics (numpy's default), IQR = p75 - p25,
    std is the sample standard deviation (ddof=1; 0 for a single sample). `throughput` is images/s at
    the median step; `throughput_wall` is images / `timed_s` (the loop's wall time, which includes
    host gaps the per-step samples cannot see); without `timed_s` the samples' sum stands in for it.
    Throughputs are None for zero-length steps (only possible with a fake clock). `rel_ci` is the half-width
    of the distribution-free 95% confidence interval of the median (`median_ci`) over the median.
    """
    if not samples_ms:
        raise ValueError("no samples to summarize")
    arr = np.asarray(samples_ms, dtype=np.float64)
    p25, p50, p75, p90, p95, p99 = np.percentile(arr, [25, 50, 75, 90, 95, 99])
    iqr = float(p75 - p25)
    wall_s = float(arr.sum()) / 1e3 if timed_s is None else timed_s
    return values(
        "timing",
        n_iters=int(arr.size),
        timed_s=wall_s,
        step_ms_p50=float(p50),
        step_ms_p90=float(p90),
        step_ms_p95=float(p95),
        step_ms_p99=float(p99),
        step_ms_mean=float(arr.mean()),
        step_ms_std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        step_ms_min=float(arr.min()),
        step_ms_max=float(arr.max()),
        step_ms_iqr=iqr,
        noisy=bool(p50 > 0 and iqr / p50 >= NOISY_IQR_RATIO),
        rel_ci=None if (ci := median_ci(arr)) is None or p50 <= 0 else (ci[1] - ci[0]) / 2 / float(p50),
        throughput=batch_size / (p50 / 1e3) if p50 > 0 else None,
        throughput_wall=batch_size * arr.size / wall_s if wall_s > 0 else None,
    )
