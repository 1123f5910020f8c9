"""The load generator: a process of its own (`python -m bench.measure.loadgen QPS N SEED`) that sends N requests
to the server on a pipe at their scheduled times, whatever the server is doing.

Design (MLPerf's LoadGen issues sample indices to a system whose samples are already in memory; so does this):
- The schedule is drawn before the first send, from a seeded generator: Poisson arrivals (exponential gaps) at QPS
  requests per second, or every request at once for QPS 0 (the Offline scenario's one large query).
- A request is one fixed-size record, `RECORD`: its index, its scheduled time and the time it was actually sent,
  both `time.monotonic_ns()` (CLOCK_MONOTONIC, one clock for every process of the machine, so the server can
  subtract them from its own). The server takes the images from its own pool.
- The generator never waits for a reply: it is an open loop, as wrk2 is. A server that stalls lets records queue
  in the pipe (and, once the pipe is full, makes the generator late); either way each request's latency is
  counted from its scheduled time, and the lateness of its send is recorded (coordinated omission, Gil Tene).
- It sleeps between sends (no spinning, so it takes no core from the model) and sends every request that is due
  in one write. It ends after the last send, when the server closes the pipe, or when its parent is gone.

`Arrivals` is the server's end: it starts the process, reads the records as they come, and stops the process.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import sys
import time

import numpy as np

RECORD = struct.Struct("<qqq")  # index, scheduled ns, sent ns
START_DELAY_S = 0.05  # between drawing the schedule and its first arrival
PR_SET_TIMERSLACK = 29  # prctl(2)
NICE = -10


def schedule(qps: float, n: int, seed: int) -> np.ndarray:
    """Arrival offsets in ns from the start: Poisson at `qps` (the first arrival one gap after the start), or all 0
    for qps 0."""
    if qps == 0:
        return np.zeros(n, dtype=np.int64)
    gaps = np.random.default_rng(seed).exponential(1e9 / qps, n)
    return np.cumsum(gaps).astype(np.int64)


def fine_timers() -> None:
    """Ask Linux to wake this process's sleeps on time: its timer slack (50 us by default, by which a sleep may
    overshoot) down to 1 us, so a send or a batcher's wait is late by the scheduler's wake-up only."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the default slack, and the lateness is recorded anyway
        pass


def _first_in_line() -> None:
    """Run ahead of the model's threads where allowed (nice -10; root or CAP_SYS_NICE), so that a send due while
    every core computes preempts them at once instead of waiting its turn: on a machine whose cores the model
    fills, a client of normal priority is late by milliseconds (send_lag_ms_p99 says by how much)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except (OSError, AttributeError):  # not permitted: normal priority, and the lateness is recorded
        pass


def main(argv: list[str]) -> int:
    qps, n, seed = float(argv[0]), int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server ends this process
    parent = os.getppid()
    due = schedule(qps, n, seed)
    start = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    due += start
    fine_timers()
    _first_in_line()
    out = sys.stdout.buffer.raw if hasattr(sys.stdout.buffer, "raw") else sys.stdout.buffer
    sent = 0
    try:
        while sent < n:
            now = time.monotonic_ns()
            while now < due[sent]:  # never early: a request sent before its time would shorten its latency
                if os.getppid() != parent:
                    return 0
                time.sleep((due[sent] - now) / 1e9)
                now = time.monotonic_ns()
            last = int(np.searchsorted(due, now, side="right"))
            data = memoryview(b"".join(RECORD.pack(i, int(due[i]), now) for i in range(sent, last)))
            while data:
                data = data[out.write(data):]
            sent = last
    except BrokenPipeError:  # the server is done with this trial
        return 0
    return 0


class Arrivals:
    """The server's end of a load generator process: `read` the requests that have arrived, `close` it."""

    def __init__(self, qps: float, n: int, seed: int) -> None:
        self.n = n
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.measure.loadgen", repr(qps), str(n), str(seed)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._fd = self._proc.stdout.fileno()
        self._buffer = b""
        self.ended = False  # the generator has sent everything and closed its end

    def read(self, timeout_s: float | None) -> list[tuple[int, int, int]]:
        """The records that arrived, waiting up to `timeout_s` for the first one (None: until one comes or the
        generator ends); [] when none came in time or the generator has ended."""
        if self.ended:
            return []
        ready, _, _ = select.select([self._fd], [], [], None if timeout_s is None else max(timeout_s, 0.0))
        if not ready:
            return []
        chunk = os.read(self._fd, 1 << 16)
        if not chunk:
            self.ended = True
            return []
        self._buffer += chunk
        whole = len(self._buffer) // RECORD.size * RECORD.size
        records = list(RECORD.iter_unpack(self._buffer[:whole]))
        self._buffer = self._buffer[whole:]
        return records

    def close(self) -> None:
        """Stop the generator (it may still be sending: an aborted trial) and reap it."""
        self._proc.stdout.close()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Arrivals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
