"""Time a step callable on a device and summarise the per-iteration samples.

Warm-up runs until BOTH a minimum count and a minimum time are reached (cudnn autotuning,
allocator growth and lazy initialisation happen there). The timed loop then stops (`StoppingRule`):
- never before `min_iters` and `min_s` are both reached, and always at `max_iters`;
- at `max_s`, converged or not;
- in between, as soon as the median is known well enough (`converged`): the distribution-free 95%
  confidence interval of the median step time (`median_ci`) lies within ±`target_rel_ci` of the
  median, and the medians of the loop's first and second halves differ by at most
  `DRIFT_TARGETS` x the target (a drifting stream's interval narrows as it grows, yet its median
  keeps moving). The rule looks each time the sample count has grown by `CHECK_GROWTH`, not every
  step: fewer looks keep the rule's own effect on the interval's coverage small, and a look costs a
  sort. `target_rel_ci = None` is the fixed rule (stop at the minima): runs made before the
  adaptive rule, and steps whose count is the point (DDP's steps, the max-batch probe).

The interval is the binomial order-statistic one, not a bootstrap: it is exact for any continuous
distribution (step times are skewed and heavy-tailed, so no normal approximation), needs no
resampling (a look costs one sort), and holds from 6 samples on, where a bootstrap of the median
is unreliable.

CPU steps are timed with `time.perf_counter`, or in process CPU time (`time.process_time`) when the timing
config says `process_time`; `timer` names the clock a row's samples come from (`TIMERS`). CUDA steps are timed with a `torch.cuda.Event`
pair per iteration recorded on the current stream, so the samples are device time and the host
does not synchronise every iteration. To keep the host from queueing work unboundedly ahead of
the GPU (which would make the host clock used by the stopping rule run far ahead of the device and
let the launch queue grow without bound), the host waits on the end event of the step `MAX_IN_FLIGHT` steps
back: at most that many steps are queued at any time, and the pipeline never drains in between.
The stopping rule sees the steps that wait has shown finished, so it never synchronises on its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch

from bench.columns import values
from bench.config.sweep import TimingConfig
from bench.intervals import median_ci, relative_ci

# Steps the host may run ahead of the GPU in the timed loop (see module docstring).
MAX_IN_FLIGHT = 4
# A cell is flagged noisy when IQR / median reaches this.
NOISY_IQR_RATIO = 0.10
# The adaptive rule looks again once the sample count has grown by this share (see the module docstring).
CHECK_GROWTH = 0.10
# A converged loop's two halves have medians at most this many targets apart.
DRIFT_TARGETS = 2.0
# What a row's step times are, by `timer`: wall time on the host, this process's CPU time, CUDA event time.
TIMERS = ("wall", "process-cpu", "cuda-events")
# timm benchmark.py's defaults: --num-warm-iter 10, --num-bench-iter 40.
TIMM_WARMUP_ITERS, TIMM_ITERS = 10, 40


@dataclass(frozen=True)
class TimingResult:
    """Raw outcome of one timed loop."""

    samples_ms: list[float]  # per-iteration step times, in loop order
    timed_s: float  # wall time of the whole timed loop, including the final synchronisation
    warmup_iters: int  # warm-up iterations actually run
    converged: bool | None = None  # StoppingRule.converged: whether the loop stopped at its target


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


def converged(samples: np.ndarray, target_rel_ci: float) -> bool:
    """Whether the median of `samples` is known to ±`target_rel_ci` (see the module docstring): its 95%
    interval lies within that of it, and the two halves' medians are at most DRIFT_TARGETS targets apart."""
    if samples.size < 2:
        return False
    median = float(np.median(samples))
    rel = relative_ci(median, median_ci(samples))
    if rel is None or rel > target_rel_ci:
        return False
    half = samples.size // 2
    drift = abs(float(np.median(samples[half:])) - float(np.median(samples[:half])))
    return drift <= DRIFT_TARGETS * target_rel_ci * median


class StoppingRule:
    """When the timed loop stops (see the module docstring); one per loop."""

    def __init__(self, cfg: TimingConfig) -> None:
        self.cfg = cfg
        self._next_look = 1
        # The verdict the row reports: whether the loop stopped because its median was known to the target
        # (on CUDA judged on the finished steps, as the rule saw them); None under the fixed rule.
        self.converged: bool | None = None if cfg.target_rel_ci is None else False

    def done(self, steps: int, elapsed_s: float, finished_ms: list[float]) -> bool:
        """Whether to stop after `steps` launched steps and `elapsed_s` seconds, given the times of the
        steps known to have finished (on the CPU every launched step; on CUDA all but those in flight)."""
        cfg = self.cfg
        if steps >= cfg.max_iters:
            return True
        if steps < cfg.min_iters or elapsed_s < cfg.min_s:
            return False
        if cfg.target_rel_ci is None or elapsed_s >= cfg.max_s:
            return True
        if len(finished_ms) < self._next_look:
            return False
        self._next_look = max(len(finished_ms) + 1, math.ceil(len(finished_ms) * (1 + CHECK_GROWTH)))
        self.converged = converged(np.asarray(finished_ms), cfg.target_rel_ci)
        return self.converged


def _time_cpu(fn: Callable[[], object], rule: StoppingRule, clock: Callable[[], float],
              step_clock: Callable[[], float]) -> tuple[list[float], float]:
    samples: list[float] = []
    start = clock()
    while not rule.done(len(samples), clock() - start, samples):
        t0 = step_clock()
        fn()
        samples.append((step_clock() - t0) * 1e3)
    return samples, clock() - start


def _time_cuda(fn: Callable[[], object], device: torch.device, rule: StoppingRule,
               clock: Callable[[], float]) -> tuple[list[float], float]:
    pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    finished: list[float] = []  # the times of pairs[:len(finished)], all known to have finished
    with torch.cuda.device(device):
        start = clock()
        while not rule.done(len(pairs), clock() - start, finished):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            pairs.append((begin, end))
            if len(pairs) > MAX_IN_FLIGHT:
                pairs[-1 - MAX_IN_FLIGHT][1].synchronize()
                # One stream runs in order: every pair up to that one has finished, so reading it waits on nothing.
                finished += [b.elapsed_time(e) for b, e in pairs[len(finished):len(pairs) - MAX_IN_FLIGHT]]
        torch.cuda.synchronize(device)
        timed_s = clock() - start
    return finished + [begin.elapsed_time(end) for begin, end in pairs[len(finished):]], timed_s


def timer(cfg: TimingConfig, device: torch.device | str) -> str:
    """The clock of `device`'s step times under `cfg`, one of TIMERS (the row's `timer`)."""
    if torch.device(device).type == "cuda":
        return "cuda-events"
    return "process-cpu" if cfg.process_time else "wall"


def time_callable(fn: Callable[[], object], device: torch.device | str, cfg: TimingConfig,
                  around_timed: ContextManager[object] | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> TimingResult:
    """Warm up, then time `fn` per iteration on `device` (see the module docstring for the rules).

    `around_timed` is entered right before the timed loop and exited right after its final
    synchronisation: memory-peak resets and power sampling hook in there, so they cover exactly
    the timed iterations. `clock` is injectable so the stopping rule can be tested with a fake clock
    (CPU only; CUDA samples always come from events). It runs the stopping rule and `timed_s`; a CPU step's
    samples come from it too, or from `time.process_time` when `timer` says "process-cpu".
    """
    device = torch.device(device)
    warmup_iters = warm_up(fn, device, cfg, clock)
    with around_timed if around_timed is not None else contextlib.nullcontext():
        rule = StoppingRule(cfg)
        if device.type == "cuda":
            samples, timed_s = _time_cuda(fn, device, rule, clock)
        else:
            step_clock = time.process_time if timer(cfg, device) == "process-cpu" else clock
            samples, timed_s = _time_cpu(fn, rule, clock, step_clock)
    return TimingResult(samples_ms=samples, timed_s=timed_s, warmup_iters=warmup_iters, converged=rule.converged)


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


def summarize(samples_ms: list[float], batch_size: int, timed_s: float | None = None,
              converged: bool | None = None) -> dict:
    """Statistics of per-step samples as results-row columns.

    Percentiles interpolate linearly between order statistics (numpy's default), IQR = p75 - p25,
    std is the sample standard deviation (ddof=1; 0 for a single sample). `throughput` is images/s at
    the median step; `throughput_wall` is images / `timed_s` (the loop's wall time, which includes
    host gaps the per-step samples cannot see); without `timed_s` the samples' sum stands in for it.
    Throughputs are None for zero-length steps (only possible with a fake clock).
    `step_ms_p50_ci_low`/`_high` is the median's distribution-free 95% interval (`median_ci`; None below 6
    samples), `rel_ci` how far it reaches from the median (`relative_ci`), and the throughput's interval
    is the same one seen as images/s. `converged` is the stopping rule's verdict (`TimingResult.converged`:
    whether the loop stopped at its target; None under the fixed rule, which has none), passed through.
    """
    if not samples_ms:
        raise ValueError("no samples to summarize")
    arr = np.asarray(samples_ms, dtype=np.float64)
    p25, p50, p75, p90, p95, p99 = np.percentile(arr, [25, 50, 75, 90, 95, 99])
    iqr = float(p75 - p25)
    wall_s = float(arr.sum()) / 1e3 if timed_s is None else timed_s
    ci = median_ci(arr)
    low, high = (None, None) if ci is None else ci
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
        step_ms_p50_ci_low=low,
        step_ms_p50_ci_high=high,
        rel_ci=relative_ci(float(p50), ci),
        converged=converged,
        throughput=_per_s(batch_size, p50),
        throughput_ci_low=None if high is None else _per_s(batch_size, high),
        throughput_ci_high=None if low is None else _per_s(batch_size, low),
        throughput_wall=batch_size * arr.size / wall_s if wall_s > 0 else None,
    )


def _per_s(batch_size: int, step_ms: float) -> float | None:
    """Images per second at a step of `step_ms`; None for a zero-length step."""
    return batch_size / (step_ms / 1e3) if step_ms > 0 else None
