"""The timer's stopping rules and statistics: fake clocks and synthetic samples, never speed."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from scipy.stats import binom
import torch

from bench.config.sweep import TimingConfig
from bench.measure.timing import median_ci, summarize, time_callable, warm_up

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
        (20, 1.0, 5, 5),  # the cap wins over both minima
    ],
)
def test_timed_loop_stops_when_both_minima_are_met(min_iters, min_s, max_iters, expected):
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

    cfg = TimingConfig(warmup_iters=3, warmup_s=0.0, min_iters=5, min_s=0.0, max_iters=10)
    result = time_callable(lambda: calls.append(1), "cpu", cfg, around_timed=window())
    assert seen == {"enter": 3, "exit": 3 + len(result.samples_ms)}
    assert len(result.samples_ms) == 5


def test_sleeping_step_is_never_measured_shorter_than_its_sleep():
    sleep_s = 0.002
    cfg = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=5, min_s=0.0, max_iters=5)
    result = time_callable(lambda: time.sleep(sleep_s), "cpu", cfg)
    assert len(result.samples_ms) == 5
    assert min(result.samples_ms) >= sleep_s * 1e3
    assert result.timed_s * 1e3 >= sum(result.samples_ms)
    stats = summarize(result.samples_ms, batch_size=4, timed_s=result.timed_s)
    order = ["step_ms_min", "step_ms_p50", "step_ms_p90", "step_ms_p95", "step_ms_p99", "step_ms_max"]
    assert [stats[k] for k in order] == sorted(stats[k] for k in order)
    assert stats["throughput_wall"] <= 4 * 5 / (5 * sleep_s)


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
