"""What `rvbench serve` offers a model: the dynamic batcher's settings, the latency bound, and MLPerf's early-stopping
rule, declared once (torch-free, for `--help`).

A batcher setting is Triton's dynamic batcher: take up to `max_batch` queued requests, waiting at most
`max_delay_ms` after the oldest one arrived for more to come; `1:0` is no batching. The scenarios themselves are
declared with the row modes in bench.columns (SCENARIOS).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_BATCHERS = "1:0,4:2,8:5"
DEFAULT_SLO_MS = 15.0  # MLPerf Inference's p99 bound for ResNet-50 in the Server scenario
DEFAULT_QUERIES = 1024  # requests per SingleStream run, Server trial and Offline query
# MLPerf's early stopping: a percentile's bound holds with this confidence (loadgen/early_stopping.cc, d = 0).
CONFIDENCE = 0.99
SERVER_PERCENTILE = 0.99  # the Server scenario's SLO is on this latency percentile
SINGLE_STREAM_PERCENTILE = 0.90  # the SingleStream scenario reports this one
# Longest Server trial: below `min passing queries / MAX_TRIAL_S` QPS the search does not go (a trial would take
# longer), and a trial's queries shrink toward that minimum at low loads so that none takes longer.
MAX_TRIAL_S = 120.0
MAX_BATCHER_BATCH = 64


@dataclass(frozen=True)
class Batcher:
    """A dynamic batcher's settings: the largest batch it forms, and how long the oldest request may wait for more."""

    max_batch: int
    max_delay_ms: float

    @property
    def label(self) -> str:
        """How views name it: "no batching", "batch ≤8, 5 ms"."""
        if self.max_batch == 1:
            return "no batching"
        return f"batch ≤{self.max_batch}, {self.max_delay_ms:g} ms"


def parse_batchers(text: str) -> list[Batcher]:
    """`--batchers`: comma-separated MAX_BATCH:DELAY_MS pairs, e.g. "1:0,8:5"; argparse's type error (one line, exit 2)
    otherwise."""
    batchers = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        size, _, delay = item.partition(":")
        try:
            batcher = Batcher(int(size), float(delay or 0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not MAX_BATCH:DELAY_MS, e.g. 8:5") from None
        if not 1 <= batcher.max_batch <= MAX_BATCHER_BATCH:
            raise argparse.ArgumentTypeError(f"max batch must be from 1 to {MAX_BATCHER_BATCH}, got {batcher.max_batch}")
        if not 0 <= batcher.max_delay_ms <= 1000:
            raise argparse.ArgumentTypeError(f"the queue delay must be from 0 to 1000 ms, got {batcher.max_delay_ms:g}")
        if batcher.max_batch == 1 and batcher.max_delay_ms:
            raise argparse.ArgumentTypeError(f"{item!r}: a batch of 1 waits for nothing; write 1:0")
        batchers.append(batcher)
    if not batchers:
        raise argparse.ArgumentTypeError("give at least one MAX_BATCH:DELAY_MS, e.g. 1:0,8:5")
    if len(set(batchers)) < len(batchers):
        raise argparse.ArgumentTypeError(f"a setting is given twice in {text!r}")
    return batchers
