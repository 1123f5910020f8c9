"""The server side of `rvbench serve`: a dynamic batcher in front of a model, the requests it served, and what
they say (latency percentiles, queueing, batches, busy time, MLPerf's early-stopping bound).

The server is one thread: it reads the load generator's records (bench.measure.loadgen.Arrivals), forms a batch
as Triton's dynamic batcher does, runs it (the model returns when the batch is done, synchronised), and stamps
each request's start and completion. Every time is `time.monotonic_ns()`, the generator's clock too. A request's
latency runs from its *scheduled* arrival to its completion; its queueing time from its scheduled arrival to the
start of its batch (so it includes any lateness of its send, which is recorded apart); its service time is its
batch's. While the model runs nothing is read: arrivals wait in the pipe, which is the queue. While it is idle the
server polls the pipe (as a busy-polling server does) instead of sleeping in select(), so a request that finds it
idle does not also wait for the scheduler to wake it (0.1-0.2 ms on a VM).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from scipy import stats

from bench.columns import values
from bench.config.serving import CONFIDENCE, Batcher
from bench.measure.loadgen import Arrivals, fine_timers


class Model(Protocol):
    """What the server runs: `infer(k)` serves a batch of k requests and returns when it is done;
    `take_gpu_busy_s` is the GPU time of the batches since the last call (None off CUDA)."""

    def infer(self, k: int) -> None: ...

    def take_gpu_busy_s(self) -> float | None: ...


@dataclass
class Served:
    """The requests a server finished, in completion order (ns), and its batches."""

    scheduled: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # each batch's size
    service: list[int] = field(default_factory=list)  # each batch's time in the model, ns
    unserved: list[int] = field(default_factory=list)  # scheduled times of requests left when a trial was given up
    ended: int = 0  # when the server stopped (ns)
    gpu_busy_s: float | None = None
    given_up: bool = False

    def add_batch(self, batch: list[tuple[int, int, int]], start: int, end: int) -> None:
        for _, scheduled, sent in batch:
            self.scheduled.append(scheduled)
            self.sent.append(sent)
            self.started.append(start)
            self.done.append(end)
        self.batches.append(len(batch))
        self.service.append(end - start)


def overlatency_allowed(n: int, percentile: float, confidence: float = CONFIDENCE) -> int:
    """MLPerf's early stopping (loadgen/early_stopping.cc, tolerance 0): the most of `n` requests that may exceed
    a latency bound while the `percentile` latency is still below it with `confidence`, i.e. the largest t with
    P(Binomial(n, 1 - percentile) <= t) < 1 - confidence; -1 when `n` is too few for any (under 459 for p99 at
    99%)."""
    t = int(stats.binom.ppf(1 - confidence, n, 1 - percentile))
    while t >= 0 and stats.binom.cdf(t, n, 1 - percentile) >= 1 - confidence:
        t -= 1
    return t


def min_passing(percentile: float, confidence: float = CONFIDENCE) -> int:
    """The fewest requests that can show a percentile below a bound (all of them under it): 459 for p99 at 99%."""
    return int(np.ceil(np.log(1 - confidence) / np.log(percentile)))


def early_stopping_bound(latencies_ms: np.ndarray, percentile: float) -> float | None:
    """MLPerf's early-stopping estimate of a latency percentile (SingleStream's figure): with t =
    `overlatency_allowed`, the t-th slowest latency (the t - 1 slower ones discarded), an upper bound on the
    percentile with 99% confidence; None with too few requests (t < 1)."""
    allowed = overlatency_allowed(len(latencies_ms), percentile)
    if allowed < 1:
        return None
    return float(np.sort(latencies_ms)[len(latencies_ms) - allowed])


def serve(model: Model, batcher: Batcher, arrivals: Arrivals,
          give_up: Callable[[Served, deque], bool] | None = None) -> Served:
    """Serve every request `arrivals` sends, batching as `batcher` says; `give_up(served, queue)` after a batch
    ends the trial early (the queued requests are counted as `unserved`)."""
    served = Served()
    queue: deque[tuple[int, int, int]] = deque()  # (index, scheduled, sent), oldest first
    delay_ns = int(batcher.max_delay_ms * 1e6)
    fine_timers()
    model.take_gpu_busy_s()
    while True:
        queue.extend(arrivals.read(0.0))
        if not queue:
            if arrivals.ended:
                break
            continue
        # Triton's rule: a full batch goes at once; else wait for more until the oldest has waited max_delay_ms.
        while len(queue) < batcher.max_batch and not arrivals.ended:
            left = queue[0][2] + delay_ns - time.monotonic_ns()
            if left <= 0:
                break
            queue.extend(arrivals.read(left / 1e9))
        batch = [queue.popleft() for _ in range(min(batcher.max_batch, len(queue)))]
        start = time.monotonic_ns()
        model.infer(len(batch))
        served.add_batch(batch, start, time.monotonic_ns())
        if give_up is not None and give_up(served, queue):
            served.given_up = True
            served.unserved = [scheduled for _, scheduled, _ in queue]
            break
    served.ended = time.monotonic_ns()
    served.gpu_busy_s = model.take_gpu_busy_s()
    return served


def back_to_back(model: Model, n: int) -> Served:
    """SingleStream: n single requests, each issued when the one before it completed (MLPerf's closed loop, so its
    scheduled time is its send time and nothing queues)."""
    served = Served()
    model.take_gpu_busy_s()
    for i in range(n):
        start = time.monotonic_ns()
        model.infer(1)
        served.add_batch([(i, start, start)], start, time.monotonic_ns())
    served.ended = time.monotonic_ns()
    served.gpu_busy_s = model.take_gpu_busy_s()
    return served


def summarize(served: Served, percentile: float | None = None, **known: object) -> dict:
    """The `serving` columns of what `served` says; `percentile`: the one whose early-stopping bound the row
    gives (lat_ms_bound, with the rule in early_stop); `known`: the columns the caller knows (offered_qps,
    max_delay_ms, slo_ms, slo_met ...).

    Requests left unserved by a given-up trial count with their latency so far (a lower bound), so its
    percentiles are lower bounds too (the row's early_stop says so)."""
    scheduled, done = np.array(served.scheduled, dtype=np.int64), np.array(served.done, dtype=np.int64)
    started, sent = np.array(served.started, dtype=np.int64), np.array(served.sent, dtype=np.int64)
    latency = (done - scheduled) / 1e6
    queue = (started - scheduled) / 1e6
    censored = (served.ended - np.array(served.unserved, dtype=np.int64)) / 1e6
    every = np.concatenate([latency, censored])
    first = min(served.scheduled + served.unserved)
    span_s = (served.ended - first) / 1e9
    busy = sum(served.service) / 1e9
    n = len(every)
    columns = dict(
        queries=n, achieved_qps=len(latency) / span_s if span_s > 0 else None,
        lat_ms_p50=float(np.percentile(every, 50)), lat_ms_p90=float(np.percentile(every, 90)),
        lat_ms_p99=float(np.percentile(every, 99)), lat_ms_p999=float(np.percentile(every, 99.9)),
        lat_ms_max=float(every.max()), queue_ms_mean=float(queue.mean()),
        queue_share=float(queue.sum() / latency.sum()) if latency.sum() > 0 else None,
        queue_dominated=float(np.mean(queue > latency - queue)),
        send_lag_ms_p99=float(np.percentile((sent - scheduled) / 1e6, 99)),
        service_ms_p50=float(np.median(served.service)) / 1e6, batch_mean=float(np.mean(served.batches)),
        batch_hist=json.dumps({str(k): int(v) for k, v in zip(*np.unique(served.batches, return_counts=True))}),
        server_busy=busy / span_s if span_s > 0 else None,
        gpu_busy=served.gpu_busy_s / span_s if served.gpu_busy_s is not None and span_s > 0 else None,
    )
    if percentile is not None:
        bound = None if served.given_up else early_stopping_bound(every, percentile)
        columns["lat_ms_bound"] = bound
        columns["early_stop"] = (f"p{percentile * 100:g} ≤ {bound:.3g} ms with {CONFIDENCE:.0%} confidence: the "
                                 f"{overlatency_allowed(n, percentile) - 1} slowest of {n} set aside (MLPerf early "
                                 "stopping)" if bound is not None else
                                 f"too few requests ({n}) for a p{percentile * 100:g} bound at {CONFIDENCE:.0%} "
                                 "confidence")
    return values("serving", **{**columns, **known})
