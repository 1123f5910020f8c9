"""The server of `rvbench serve` against queueing theory, on a stand-in model whose service time is fixed and known
(tests/serving_standins.py): Poisson arrivals from the real load-generator process, the real batcher, the real
clocks. Marked `alone`: the queue's waiting times are the machine's scheduling latencies too, so these run with
the machine to themselves."""

from __future__ import annotations

import numpy as np
import pytest

from bench.config.serving import Batcher
from bench.measure import scenarios
from bench.measure.loadgen import Arrivals
from bench.measure.serving import serve
from tests.serving_standins import SleepModel, lindley_waits

pytestmark = pytest.mark.alone

SERVICE_S = 0.010


@pytest.mark.parametrize("load, n", [(0.5, 1500), (0.8, 1500)])
def test_mean_wait_matches_pollaczek_khinchine(load: float, n: int) -> None:
    """M/D/1 without batching: the mean wait of the served requests matches Pollaczek-Khinchine's within 15%.

    P-K is an expectation; a run's own mean wait scatters about it a lot near saturation (at 80% load the mean of
    1,500 waits has a relative standard deviation near 20%: the waits come in long correlated busy periods). So the
    measured mean is compared through a control variate: the ideal FIFO queue fed the same arrival times and the
    same measured service times (Lindley's recursion) has the same sample-path noise, and P-K is its exact mean;
    measured - ideal + P-K is an unbiased estimate of the harness's mean wait with the path's noise taken out. The
    raw measured mean is held to a looser bound too, so a harness off by a constant factor cannot pass."""
    qps = load / SERVICE_S
    model = SleepModel(SERVICE_S)
    with Arrivals(qps, n, seed=7) as arrivals:
        served = serve(model, Batcher(1, 0), arrivals)
    scheduled = np.array(served.scheduled) / 1e9
    waits = (np.array(served.started) - np.array(served.scheduled)) / 1e9
    service = np.array(served.service) / 1e9
    assert len(waits) == n and served.batches == [1] * n
    rho = qps * service.mean()
    pk = qps * np.mean(service**2) / (2 * (1 - rho))  # M/G/1; M/D/1 when the service is constant
    ideal = lindley_waits(scheduled, service)
    estimate = waits.mean() - ideal.mean() + pk
    print(f"load {rho:.3f}: measured mean wait {waits.mean() * 1e3:.2f} ms, same path ideal {ideal.mean() * 1e3:.2f} "
          f"ms, P-K {pk * 1e3:.2f} ms, estimate {estimate * 1e3:.2f} ms")
    assert estimate == pytest.approx(pk, rel=0.15)
    assert waits.mean() == pytest.approx(pk, rel=0.6)


def test_a_stall_shows_in_every_request_scheduled_during_it() -> None:
    """Coordinated omission: one 200 ms stall of the server. Every request scheduled during it waits out the rest
    of the stall, so the stall is in the p99 of the trial, carried by about a fifth of a second's worth of requests,
    not by the one request that was in service."""
    qps, stall_s = 100.0, 0.2
    model = SleepModel(0.002, stall_at=200, stall_s=stall_s)
    with Arrivals(qps, 800, seed=3) as arrivals:
        served = serve(model, Batcher(1, 0), arrivals)
    scheduled, done = np.array(served.scheduled), np.array(served.done)
    latency_ms = (done - scheduled) / 1e6
    start, end = model.stalled_at
    during = (scheduled > start) & (scheduled < end)
    assert during.sum() >= 10  # Poisson at 100/s over 200 ms: about 20
    # Each of them is answered only after the stall: its latency holds the stall's remainder from its schedule.
    assert np.all(done[during] >= end)
    assert np.all(latency_ms[during] >= (end - scheduled[during]) / 1e6)
    assert np.sum(latency_ms > 100) >= 8  # many slow requests, not one
    assert np.sum(np.array(served.service) > stall_s * 1e9 * 0.9) == 1  # the model stalled once
    assert np.percentile(latency_ms, 99) > 100


def _simulated_pass(qps: float, service_s: float, slo_s: float, n: int, seeds: range) -> float:
    """The share of simulated Server loads at `qps` that pass: M/D/1 by Lindley's recursion, Poisson arrivals,
    trials of `n` requests each starting empty, pooled until `scenarios.verdict` decides, as the search does."""
    passed = 0
    for seed in seeds:
        over = total = 0
        for k in range(scenarios.EXTEND_TRIALS):
            arrivals = np.cumsum(np.random.default_rng(seed * scenarios.EXTEND_TRIALS + k).exponential(1 / qps, n))
            latency = lindley_waits(arrivals, np.full(n, service_s)) + service_s
            over, total = over + int(np.sum(latency > slo_s)), total + n
            decided = scenarios.verdict(over, total)
            if decided is not None:
                break
        passed += bool(decided)
    return passed / len(seeds)


def test_the_server_search_lands_where_a_simulation_of_the_same_queue_meets_the_slo() -> None:
    """The Server scenario's search on the stand-in (5 ms, no batching, p99 SLO 40 ms) finds the QPS at which a
    discrete-event simulation of the same queue, judged by the same rule (p99 within the SLO with 99% confidence,
    MLPerf's early stopping, on trials of as many requests), passes half its trials: within 10%.

    The simulated server's service time is the one the harness achieves with the stand-in: the Offline scenario's
    time per request (every request queued, so the sleep's overshoot and the server's own work per batch are in it,
    about 0.2 ms here: 4% of the service, and near 8% of the QPS at the SLO, as the QPS falls faster than the
    service time grows)."""
    service_s, slo_ms, queries = 0.005, 40.0, 1000
    model = SleepModel(service_s)
    cycle_s = 1 / scenarios.offline(model, Batcher(1, 0), 400, seed=5)["achieved_qps"]
    rows = list(scenarios.server_search(model, Batcher(1, 0), slo_ms, queries, seed=11))
    result = rows[-1]
    assert result["record"] == "result" and result["qps_at_slo"] is not None
    lo, hi = 0.3 / cycle_s, 1 / cycle_s  # bisect the simulated pass rate to 50%
    for _ in range(12):
        mid = (lo + hi) / 2
        if _simulated_pass(mid, cycle_s, slo_ms / 1e3, queries, range(40)) >= 0.5:
            lo = mid
        else:
            hi = mid
    print(f"search: {result['qps_at_slo']:.1f} QPS after {len(rows) - 1} trials; simulation with a "
          f"{cycle_s * 1e3:.3f} ms service: {lo:.1f} QPS")
    assert result["qps_at_slo"] == pytest.approx(lo, rel=0.10)
