"""Stand-in models for the serving tests: a service time that is fixed and known (a sleep, which the server's clock
sees whole), so what the batcher and the load generator do can be held against queueing theory."""

from __future__ import annotations

import time

import numpy as np


class SleepModel:
    """`infer(k)` takes `service_s` whatever k is (a batch costs what one request does); the call numbered
    `stall_at` (from 1) takes `stall_s` instead, once."""

    def __init__(self, service_s: float, stall_at: int | None = None, stall_s: float = 0.0) -> None:
        self.service_s, self.stall_at, self.stall_s = service_s, stall_at, stall_s
        self.calls = 0
        self.stalled_at: tuple[int, int] | None = None  # (start, end) of the stall, monotonic ns

    def infer(self, k: int) -> None:
        self.calls += 1
        if self.calls == self.stall_at:
            start = time.monotonic_ns()
            time.sleep(self.stall_s)
            self.stalled_at = (start, time.monotonic_ns())
        else:
            time.sleep(self.service_s)

    def take_gpu_busy_s(self) -> None:
        return None


def lindley_waits(arrivals: np.ndarray, services: np.ndarray) -> np.ndarray:
    """Each customer's wait in a FIFO single-server queue (Lindley's recursion): W[i+1] = max(0, W[i] + S[i] -
    (A[i+1] - A[i]))."""
    waits = np.empty(len(arrivals))
    free = -np.inf
    for i, (arrival, service) in enumerate(zip(arrivals, services)):
        start = max(arrival, free)
        waits[i] = start - arrival
        free = start + service
    return waits
