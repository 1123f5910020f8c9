"""Same-run ratio gates: rv must not be more than 10% slower than the faster reference.

The rule (`bench.regress.gate.GateRule`): rv, torchvision (where it has the arch) and timm are built for
the same arch, mode and input (conftest's CI set: 64 px, batch 2, fp32), warmed up with 2
untimed steps each, then timed interleaved in this one process for R rounds; the start of each
round rotates (A B C, B C A, C A B, ...) and in a round each impl runs k steps back to back, its
round time being their mean. For each reference the statistic is the median over rounds of the
per-round ratio rv/reference; the gate compares the larger one (the one against the faster
reference) with 1.10 and fails when it is above. A failing attempt is measured once more; only a failure confirmed
by the second attempt fails the test, with a message naming the model, mode and measured ratio.

R x k: inference 15 x 3 steps; train 9 x 1 (a train step costs about five forwards: one step
gives as steady a round time, and the gates stay within CI's time budget).

Clock (fixture `gate_clock`): on CPU, torch is pinned to one thread and the steps are timed in
process CPU time, so the time other jobs hold the shared cores (preemption, the main noise on CI
machines, which does not cancel between impls) is not charged to any impl. On CUDA: wall time,
each step synchronising.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.regress.gate import GateRule, ratio_gate
from bench.models import list_entries

ROUNDS_ITERS = {"inference": (15, 3), "train": (9, 1)}


def test_rv_within_10pct_of_faster_reference(
    gate_clock: Callable[[], float], make_workload, ci_gate: tuple[str, str]
) -> None:
    """Fails when rv's step is >10% slower than the faster of torchvision/timm (rule above)."""
    arch, mode = ci_gate
    works = {entry.impl: make_workload(entry, mode) for entry in list_entries(archs=[arch])}
    assert "rv" in works and len(works) >= 2, f"{arch} needs rv and a reference, has {list(works)}"
    rounds, iters = ROUNDS_ITERS[mode]
    rule = GateRule(rounds=rounds, iters=iters, clock=gate_clock)
    result = ratio_gate(works["rv"].label, "rv", {impl: work.step for impl, work in works.items()}, rule)
    print(result.message())
    assert result.passed, result.message()
