"""The timer's stopping rules and statistics: fake clocks and synthetic samples, never speed."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import pytest
from scipy.stats import binom
import torch

from bench.config.sweep import TimingConfig
from bench.errors import UsageError
from bench.measure import timing
from bench.intervals import median_ci
from bench.measure.timing import StoppingRule, converged, summarize, time_callable, warm_up

CPU = torch.device("cpu")


class FakeClock:
    """A clock that only moves when the step under test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def _run(cfg: TimingConfig, step_s: float = 0.125):
    clock = FakeClock()
    return time_callable(lambda: clock.step(step_s), "cpu", cfg, clock=clock)


def test_warm_up_needs_both_count_and_time():
    clock = FakeClock()
    by_time = TimingConfig(warmup_iters=2, warmup_s=0.5)
    assert warm_up(lambda: clock.step(0.125), CPU, by_time, clock) == 4
    by_count = TimingConfig(warmup_iters=6, warmup_s=0.25)
    assert warm_up(lambda: clock.step(0.125), CPU, by_count, clock) == 6


@pytest.mark.parametrize(
    ("min_iters", "min_s", "max_iters", "expected"),
    [
        (3, 1.0, 100, 8),  # time is the binding minimum: 8 x 0.125 s = 1 s
        (20, 1.0, 100, 20),  # count is the binding minimum
        (3, 1.0, 5, 5),  # the cap wins over the time minimum
    ],
)
def test_timed_loop_stops_when_both_minima_are_met(min_iters, min_s, max_iters, expected):
    """Identical samples converge at the first look, so the minima alone decide."""
    cfg = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=min_iters, min_s=min_s, max_iters=max_iters)
    result = _run(cfg)
    assert len(result.samples_ms) == expected
    assert result.samples_ms == [125.0] * expected
    assert result.timed_s == pytest.approx(0.125 * expected)
    assert result.warmup_iters == 1


def test_around_timed_brackets_exactly_the_timed_iterations():
    calls = []
    seen = {}

    @contextlib.contextmanager
    def window():
        seen["enter"] = len(calls)
        yield
        seen["exit"] = len(calls)

    cfg = TimingConfig(warmup_iters=3, warmup_s=0.0, min_iters=5, min_s=0.0, max_iters=10, target_rel_ci=None)
    result = time_callable(lambda: calls.append(1), "cpu", cfg, around_timed=window())
    assert seen == {"enter": 3, "exit": 3 + len(result.samples_ms)}
    assert len(result.samples_ms) == 5


def test_sleeping_step_is_never_measured_shorter_than_its_sleep():
    sleep_s = 0.002
    cfg = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=5, min_s=0.0, max_iters=5, target_rel_ci=None)
    result = time_callable(lambda: time.sleep(sleep_s), "cpu", cfg)
    assert len(result.samples_ms) == 5
    assert min(result.samples_ms) >= sleep_s * 1e3
    assert result.timed_s * 1e3 >= sum(result.samples_ms)
    stats = summarize(result.samples_ms, batch_size=4, timed_s=result.timed_s)
    order = ["step_ms_min", "step_ms_p50", "step_ms_p90", "step_ms_p95", "step_ms_p99", "step_ms_max"]
    assert [stats[k] for k in order] == sorted(stats[k] for k in order)
    assert stats["throughput_wall"] <= 4 * 5 / (5 * sleep_s)


def test_process_time_counts_the_step_s_cpu_not_its_sleep_and_the_loop_stays_wall_time():
    """--process-time: a step that sleeps 20 ms costs its process almost no CPU time; the loop's own seconds
    (the stopping rule's, timed_s) stay wall time, so a run's budget still bounds it."""
    sleep_s = 0.02
    cfg = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=5, min_s=0.0, max_iters=5, target_rel_ci=None,
                       process_time=True)
    assert timing.timer(cfg, "cpu") == "process-cpu" and timing.timer(TimingConfig(), "cpu") == "wall"
    assert timing.timer(cfg, "cuda:0") == "cuda-events"  # CUDA steps are timed by events either way
    result = time_callable(lambda: time.sleep(sleep_s), "cpu", cfg)
    assert len(result.samples_ms) == 5 and max(result.samples_ms) < sleep_s * 1e3 / 4
    assert result.timed_s >= 5 * sleep_s


def test_summarize_exact_percentiles():
    samples = [float(v) for v in range(100, 0, -1)]  # 1..100 ms, out of order
    stats = summarize(samples, batch_size=2, timed_s=8.0)
    assert stats["n_iters"] == 100
    assert stats["timed_s"] == 8.0
    assert stats["step_ms_p50"] == pytest.approx(50.5)
    assert stats["step_ms_p90"] == pytest.approx(90.1)
    assert stats["step_ms_p95"] == pytest.approx(95.05)
    assert stats["step_ms_p99"] == pytest.approx(99.01)
    assert stats["step_ms_iqr"] == pytest.approx(75.25 - 25.75)
    assert stats["step_ms_mean"] == pytest.approx(50.5)
    assert stats["step_ms_std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert (stats["step_ms_min"], stats["step_ms_max"]) == (1.0, 100.0)
    assert stats["noisy"] is True
    assert stats["throughput"] == pytest.approx(2 / 0.0505)
    assert stats["throughput_wall"] == pytest.approx(2 * 100 / 8.0)


def test_summarize_steady_samples_are_not_noisy():
    stats = summarize([10.0, 10.0, 10.0, 10.5], batch_size=8)
    assert stats["noisy"] is False
    assert stats["step_ms_p50"] == 10.0
    assert stats["throughput"] == pytest.approx(800.0)
    # Without a wall time the samples' sum stands in for it.
    assert stats["timed_s"] == pytest.approx(0.0405)
    assert stats["throughput_wall"] == pytest.approx(8 * 4 / 0.0405)


def test_summarize_noise_threshold_is_inclusive():
    # p25 = 9.5, p75 = 10.5 -> IQR = 1.0 = 10% of the median 10.0.
    assert summarize([9.0, 9.5, 10.0, 10.5, 11.0], batch_size=1)["noisy"] is True


def test_summarize_single_sample():
    stats = summarize([4.0], batch_size=1)
    assert stats["step_ms_std"] == 0.0
    assert stats["step_ms_iqr"] == 0.0
    assert stats["step_ms_p99"] == 4.0


def test_median_ci_is_the_binomial_order_statistic_interval():
    """For n = 100 the 95% interval of the median is x(40)..x(61) (1-based; Binomial(100, 1/2) puts
    1.8% below 40 and 1.8% above 60), so on 1..100 ms its half-width is 10.5 ms, 20.8% of 50.5 ms."""
    samples = np.arange(100, 0, -1, dtype=np.float64)
    assert median_ci(samples) == (40.0, 61.0)
    assert summarize(list(samples), batch_size=1)["rel_ci"] == pytest.approx(10.5 / 50.5)
    coverage = binom.cdf(60, 100, 0.5) - binom.cdf(39, 100, 0.5)
    assert coverage >= 0.95


def test_median_ci_needs_six_samples_and_narrows_with_more():
    assert median_ci(np.arange(5.0)) is None and summarize([1.0] * 5, batch_size=1)["rel_ci"] is None
    assert median_ci(np.arange(6.0)) == (0.0, 5.0)  # 1 - 2 / 64 = 96.9% >= 95%
    rng = np.random.default_rng(0)
    few, many = (summarize(list(rng.normal(10, 1, n)), batch_size=1)["rel_ci"] for n in (20, 2000))
    assert many < few / 5


# ---- the adaptive stopping rule, on synthetic streams of step times -----------------------------------------

ADAPTIVE = TimingConfig(warmup_iters=0, warmup_s=0.0, min_iters=6, min_s=0.0, max_iters=100_000, max_s=60.0,
                        target_rel_ci=0.01)


def _stream(cfg: TimingConfig, draw) -> tuple[list[float], dict]:
    """Time a fake step whose duration in ms is `draw(i)` for the i-th step; the loop's samples and summary."""
    clock = FakeClock()
    steps = iter(range(10**9))
    result = time_callable(lambda: clock.step(draw(next(steps)) / 1e3), "cpu", cfg, clock=clock)
    return result.samples_ms, summarize(result.samples_ms, 1, result.timed_s, result.converged)


def test_a_steady_stream_stops_early_and_converged():
    rng = np.random.default_rng(1)
    samples, row = _stream(ADAPTIVE, lambda i: 10 * rng.lognormal(0, 0.02))
    assert row["converged"] is True and row["rel_ci"] <= 0.01
    assert len(samples) < 200  # ±1% of a 2%-spread median needs tens of steps, not the 6000 that 60 s allows
    assert row["step_ms_p50_ci_low"] <= row["step_ms_p50"] <= row["step_ms_p50_ci_high"]
    assert row["throughput_ci_low"] == pytest.approx(1e3 / row["step_ms_p50_ci_high"])
    assert row["throughput_ci_high"] == pytest.approx(1e3 / row["step_ms_p50_ci_low"])


def test_a_heavy_tailed_stream_runs_longer_than_a_steady_one():
    """Same body, but 40% of the steps are stalled by up to 3x (a Pareto tail): the median moves into the
    sparse part of the distribution, its interval narrows slower, and the rule takes more steps."""
    steady_rng, heavy_rng = np.random.default_rng(2), np.random.default_rng(2)
    steady, _ = _stream(ADAPTIVE, lambda i: 10 * steady_rng.lognormal(0, 0.02))

    def heavy(i: int) -> float:
        base = 10 * heavy_rng.lognormal(0, 0.02)
        return base * (1 + min(2.0, heavy_rng.pareto(1.5))) if heavy_rng.random() < 0.4 else base

    tailed, row = _stream(ADAPTIVE, heavy)
    assert len(tailed) > 1.5 * len(steady)
    assert row["converged"] is True


def test_a_drifting_stream_hits_the_cap_unconverged():
    """Steps slow down by 0.5% each: every look finds the loop's halves apart, however narrow the interval."""
    cfg = dataclasses.replace(ADAPTIVE, max_s=5.0)
    rng = np.random.default_rng(3)
    samples, row = _stream(cfg, lambda i: 10 * (1 + 0.005 * i) * rng.lognormal(0, 0.01))
    assert row["timed_s"] >= 5.0 and row["converged"] is False
    assert row["step_ms_p50_ci_low"] is not None and row["rel_ci"] is not None  # the interval it reached
    assert not converged(np.asarray(samples), cfg.target_rel_ci)


def test_the_stated_interval_covers_the_true_median():
    """100 seeded loops of a skewed stream (lognormal, 5% spread, true median 10 ms) stopped by the rule at
    ±1%: the interval each row states holds 10 ms in at least 93 of them (95% nominal; looking at the data
    while it comes in costs a little)."""
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        _, row = _stream(ADAPTIVE, lambda i: 10 * rng.lognormal(0, 0.05))
        covered += row["step_ms_p50_ci_low"] <= 10.0 <= row["step_ms_p50_ci_high"]
    assert covered >= 93


def test_max_s_caps_and_min_iters_holds_past_it():
    slow = dataclasses.replace(ADAPTIVE, min_iters=6, max_s=0.5)
    samples, row = _stream(slow, lambda i: 1000.0 * (1 + 0.1 * (i % 2)))  # 1-1.1 s steps, never within ±1%
    assert len(samples) == 6 and row["converged"] is False  # max_s passed after the first step


def test_the_fixed_rule_stops_at_the_minima_and_claims_nothing():
    fixed = dataclasses.replace(ADAPTIVE, target_rel_ci=None, min_iters=7)
    rng = np.random.default_rng(4)
    samples, row = _stream(fixed, lambda i: 10 * rng.lognormal(0, 0.3))
    assert len(samples) == 7 and row["converged"] is None


def test_the_rule_looks_each_time_the_count_grew_a_tenth(monkeypatch):
    """Looking at every step would cost a sort per step; the rule looks about log(n) / log(1.1) times."""
    looks = []
    monkeypatch.setattr(timing, "converged", lambda samples, target: looks.append(samples.size) or False)
    rule = StoppingRule(dataclasses.replace(ADAPTIVE, min_iters=1))
    assert not any(rule.done(n, 0.0, [1.0] * n) for n in range(1, 1001))
    assert looks[:4] == [1, 2, 3, 4] and looks[-1] > 900
    assert all(b >= max(a + 1, a * 1.1) for a, b in zip(looks, looks[1:]))
    assert len(looks) < 90


@pytest.mark.parametrize("bad", [dict(target_rel_ci=0.0), dict(target_rel_ci=1.5), dict(min_s=2.0, max_s=1.0),
                                 dict(min_iters=10, max_iters=5), dict(max_s=0.0)])
def test_a_bad_timing_config_is_one_usage_error(bad):
    with pytest.raises(UsageError, match="^timing: "):
        dataclasses.replace(ADAPTIVE, **bad)
