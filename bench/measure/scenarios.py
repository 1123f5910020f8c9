"""MLPerf Inference's three scenarios, each measured on a `Model` through the server of bench.measure.serving.

- SingleStream: `queries` single requests back to back; the row's figure is the p90 latency's early-stopping bound.
- Offline: one query of `queries` samples, all there at once; the batcher forms full batches; the figure is the
  throughput (achieved_qps, samples per second).
- Server: Poisson arrivals at an offered QPS; a trial passes when MLPerf's early-stopping rule holds for p99 ≤ SLO
  (`overlatency_allowed`), and gives up as soon as it no longer can. `server_search` brackets the highest offered
  QPS that passes: it starts at half the batcher's capacity (the largest batch's rate in warm-up), halves until a
  trial passes (down to the load a MAX_TRIAL_S trial can test) and steps up until one fails, then bisects in log
  QPS until the two are within SEARCH_TOLERANCE. Each trial is a row; so is the answer (record "result").
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Iterator

import numpy as np

from bench.config.serving import CONFIDENCE, MAX_TRIAL_S, SERVER_PERCENTILE, SINGLE_STREAM_PERCENTILE, Batcher
from bench.measure.loadgen import Arrivals
from bench.measure.serving import Model, Served, back_to_back, min_passing, overlatency_allowed, serve, summarize

SEARCH_TOLERANCE = 0.03  # the search ends when the failing QPS is within 3% of the passing one
MAX_TRIALS = 24
EXTEND_TRIALS = 4  # trials at one load, pooled, before an undecided verdict counts as a miss
CAPACITY_REPEATS = 5  # warm-up batches whose median time gives the capacity estimate


def single_stream(model: Model, queries: int) -> dict:
    """The SingleStream row's serving columns."""
    return summarize(back_to_back(model, queries), SINGLE_STREAM_PERCENTILE, max_delay_ms=0.0,
                     offered_qps=None)


def offline(model: Model, batcher: Batcher, queries: int, seed: int) -> dict:
    """The Offline row's serving columns: every sample queued at once, served in batches of `batcher.max_batch`."""
    with Arrivals(0, queries, seed) as arrivals:
        served = serve(model, batcher, arrivals)
    return summarize(served, max_delay_ms=batcher.max_delay_ms)


def capacity(model: Model, batcher: Batcher) -> float:
    """Requests per second the server manages in full batches: the batcher's largest batch over its median time."""
    times = []
    for _ in range(CAPACITY_REPEATS):
        start = time.perf_counter()
        model.infer(batcher.max_batch)
        times.append(time.perf_counter() - start)
    return batcher.max_batch / float(np.median(times))


def verdict(over: int, n: int) -> bool | None:
    """The Server rule on the requests served at one load (pooled over its trials), `over` of `n` above the SLO:
    True when p99 ≤ SLO holds with 99% confidence (MLPerf's early stopping: over ≤ overlatency_allowed(n)); False
    when even the point estimate misses it (over > 1% of n); None while the two disagree (more requests decide)."""
    if over <= overlatency_allowed(n, SERVER_PERCENTILE):
        return True
    if over > (1 - SERVER_PERCENTILE) * n:
        return False
    return None


class _GiveUp:
    """A trial is given up once more requests exceed the SLO than a p99 within it allows even as a point estimate
    of all the requests at this load (`limit`): those done over it, and those queued that have waited longer."""

    def __init__(self, slo_ms: float, limit: float) -> None:
        self.slo_ns, self.limit, self.over = slo_ms * 1e6, limit, 0

    def __call__(self, served: Served, queue: deque) -> bool:
        k = served.batches[-1]
        self.over += sum(d - s > self.slo_ns for s, d in zip(served.scheduled[-k:], served.done[-k:]))
        waiting = sum(served.done[-1] - scheduled > self.slo_ns for _, scheduled, _ in queue)
        return self.over + waiting > self.limit


def over_slo(served: Served, slo_ms: float) -> int:
    """Requests above the SLO: served ones, and those a given-up trial left queued (already waiting longer)."""
    latency = np.array(served.done) - np.array(served.scheduled)
    return int(np.sum(latency > slo_ms * 1e6)) + len(served.unserved)


def server_load(model: Model, batcher: Batcher, qps: float, queries: int, slo_ms: float, seed: int) -> Iterator[dict]:
    """Server trials at `qps` offered, each of `trial_queries` requests, until the requests of all of them decide
    `verdict` (at most EXTEND_TRIALS; still undecided then, it is a miss: p99 ≤ SLO was not shown). Yields each
    trial's columns; slo_met is the verdict on the last one (None on the undecided ones before it)."""
    over = n = 0
    for k in range(EXTEND_TRIALS):
        planned = trial_queries(qps, queries)
        with Arrivals(qps, planned, seed * EXTEND_TRIALS + k) as arrivals:
            served = serve(model, batcher, arrivals, _GiveUp(slo_ms, (1 - SERVER_PERCENTILE) * (n + planned) - over))
        over, n = over + over_slo(served, slo_ms), n + len(served.done) + len(served.unserved)
        decided = verdict(over, n)
        if served.given_up or k == EXTEND_TRIALS - 1:
            decided = bool(decided)
        row = summarize(served, SERVER_PERCENTILE, slo_ms=slo_ms, offered_qps=qps, max_delay_ms=batcher.max_delay_ms,
                        slo_met=decided)
        row["early_stop"] = (
            f"p99 ≤ {slo_ms:g} ms with {CONFIDENCE:.0%} confidence (MLPerf early stopping) needs at most "
            f"{max(overlatency_allowed(n, SERVER_PERCENTILE), 0)} of {n} requests at this load over it: {over} were"
            + ("; given up once the p99 could not be within it, so latencies are lower bounds" if served.given_up
               else "") + ("; undecided, so the load runs again" if decided is None else ""))
        yield row
        if decided is not None:
            return


def trial_queries(qps: float, queries: int) -> int:
    """A trial's requests: `queries`, fewer where that many would take over MAX_TRIAL_S, never fewer than a pass
    needs."""
    return max(min_passing(SERVER_PERCENTILE), min(queries, int(qps * MAX_TRIAL_S)))


def lowest_qps() -> float:
    """The lowest load a Server trial tests: the fewest requests that can pass, in MAX_TRIAL_S."""
    return min_passing(SERVER_PERCENTILE) / MAX_TRIAL_S


def server_search(model: Model, batcher: Batcher, slo_ms: float, queries: int, seed: int) -> Iterator[dict]:
    """Yield each trial's columns (record "trial", numbered from 1) as it ends, then the result's: the passing trial
    at the highest QPS with qps_at_slo set, or, when even the lowest load failed, that trial with qps_at_slo None
    and a message."""
    passed: dict | None = None
    failed: dict | None = None
    trials = 0

    def trial(qps: float) -> Iterator[dict]:
        nonlocal trials, passed, failed
        for row in server_load(model, batcher, qps, queries, slo_ms, seed + trials):
            trials += 1
            yield {**row, "trial": trials, "record": "trial"}
        if row["slo_met"] and (passed is None or qps > passed["offered_qps"]):
            passed = row
        if not row["slo_met"] and (failed is None or qps < failed["offered_qps"]):
            failed = row

    floor = lowest_qps()
    qps = max(capacity(model, batcher) / 2, floor)
    while trials < MAX_TRIALS:  # down until one passes
        yield from trial(qps)
        if passed is not None or qps <= floor:
            break
        qps = max(qps / 2, floor)
    if passed is None:
        yield {**failed, "record": "result", "qps_at_slo": None,
               "message": f"SLO not met even at the lowest load tried, {failed['offered_qps']:.3g} QPS: "
                          f"p99 {failed['lat_ms_p99']:.3g} ms > {slo_ms:g} ms (a trial at a lower load would take "
                          f"over {MAX_TRIAL_S:g} s)"}
        return
    while failed is None and trials < MAX_TRIALS:  # up until one fails
        yield from trial(passed["offered_qps"] * 2)
    while failed is not None and trials < MAX_TRIALS and failed["offered_qps"] > passed["offered_qps"] * (1 + SEARCH_TOLERANCE):
        yield from trial(math.sqrt(passed["offered_qps"] * failed["offered_qps"]))
    within = (f"within {SEARCH_TOLERANCE:.0%}" if failed is not None and failed["offered_qps"] <= passed["offered_qps"] * (1 + SEARCH_TOLERANCE)
              else f"after {MAX_TRIALS} trials")
    failing = f"; {failed['offered_qps']:.4g} QPS failed" if failed is not None else ""
    yield {**passed, "record": "result", "qps_at_slo": passed["offered_qps"],
           "message": f"highest passing QPS of {trials} trials, bracketed {within}{failing}"}
