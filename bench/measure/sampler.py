"""A background thread that polls a probe at a fixed interval while a measurement runs.

Power (NVML) and host memory (RSS) are read this way: neither can be hooked into the step
itself without perturbing it, so a daemon thread samples them alongside the timed loop.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class BackgroundSampler(Generic[T]):
    """Call `probe()` every `interval_s` seconds between `start()` and `stop()`.

    With `edges=True` one sample is also taken synchronously at `start()` and one at `stop()`, so
    even a window shorter than the interval yields two samples bracketing it (RSS needs its
    baseline from before the first step). With `edges=False` every sample falls strictly inside the
    window: power needs that, because the GPU is idle at both edges (the host has just
    synchronised), and an edge sample would add idle power and `gpu_idle` to a loop that never
    idled. Samples are `(perf_counter_s, value)`.
    """

    def __init__(self, probe: Callable[[], T], interval_s: float, edges: bool) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._edges = edges
        self._samples: list[tuple[float, T]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self) -> None:
        self._samples.append((time.perf_counter(), self._probe()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._take()

    def start(self) -> None:
        """Start polling (after the first sample, with `edges`)."""
        if self._edges:
            self._take()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[tuple[float, T]]:
        """Stop polling (then take the final sample, with `edges`); return all samples in time order."""
        if self._thread is None:
            raise RuntimeError("sampler was never started")
        self._stop.set()
        self._thread.join()
        if self._edges:
            self._take()
        return self._samples
