"""Same-run ratio gate: is our implementation more than X% slower than the fastest reference?

Absolute step times drift with the machine (shared CI cores, clocks, other jobs), so the gate
never compares against a stored number. It times the subject and its references interleaved in
one process, round by round, so every round sees the same machine state, and gates the median of
the per-round speed ratios (`speed_label`: subject speed ÷ reference speed, above 1 = the subject is
faster; the convention of every ratio rvbench shows). A failing attempt is re-measured, and only a failure every attempt confirms
fails. The confirmations must be independent of the first attempt: a state that one process
happened to get (where the allocator placed the weights, which kernels oneDNN chose and cached)
would repeat itself in the same process. So the caller can have them measured elsewhere, in a
fresh process with fresh allocations (`rerun`), and every attempt runs the candidates in another
order (`attempt_order`). Each ratio is shown with its 95% interval (bench.intervals.ratio_ci on the
per-round ratios: the median's distribution-free interval), so a message says how far from the floor
the ratio could be, not just where it fell.

The module knows nothing about models or torch: a candidate is any zero-argument callable that
runs one step and returns when the work is done (a CUDA caller synchronises inside it).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.columns import speed_label
from bench.errors import UsageError
from bench.intervals import ci_text, ratio_ci

Step = Callable[[], object]


@dataclass(frozen=True)
class GateRule:
    """How the gate measures and decides.

    Each attempt: every candidate runs `warmup` untimed steps, then `rounds` rounds; in a round
    each candidate runs `iters` steps back to back (order rotates round by round) and its round
    time is their mean, so a slowdown that hits only some steps still counts. The statistic is,
    for each reference, the median over rounds of the subject's speed ÷ the reference's (reference
    round time / subject round time); the gate compares the smallest of these (the one against the
    faster reference) with `min_speed`: the default 1/1.10 lets the subject take at most 10% longer.
    Up to `attempts` attempts; the gate fails only if all do. `clock` reads the time: wall
    time by default; a single-threaded CPU measurement can use `time.process_time`, which
    other jobs on a shared machine do not move.
    """

    min_speed: float = 1 / 1.10
    rounds: int = 15
    iters: int = 3
    warmup: int = 2
    attempts: int = 3
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        if self.min_speed <= 0 or min(self.rounds, self.iters, self.attempts) < 1 or self.warmup < 0:
            raise UsageError(
                "gate rule needs min_speed > 0, rounds/iters/attempts >= 1 and warmup >= 0; "
                f"got {self.min_speed}, {self.rounds}/{self.iters}/{self.attempts}, {self.warmup}"
            )

    def describe(self) -> str:
        """The rule in one line, for failure messages and logs."""
        return (
            f"median over {self.rounds} interleaved rounds (mean of {self.iters} steps each, "
            f"clock {getattr(self.clock, '__name__', self.clock)}) "
            f"of subject speed ÷ reference speed, vs the faster reference, must be >= {self.min_speed:.3f}; "
            f"fails only if all {self.attempts} attempts fall below it"
        )


@dataclass(frozen=True)
class GateResult:
    """Outcome of a gate: per-reference ratios of the deciding attempt plus earlier attempts."""

    label: str  # what was measured, e.g. "resnet50 inference 64px bs2 cpu"
    subject: str  # name of the candidate under test, e.g. "rv"
    ratios: dict[str, float]  # reference -> median per-round subject speed ÷ reference speed
    median_ms: dict[str, float]  # candidate -> median round time in ms
    rule: GateRule
    history: tuple[float, ...]  # gate ratio of each attempt, the deciding one last
    # reference -> 95% interval of its ratio (None below 6 rounds, too few for one)
    intervals: dict[str, tuple[float, float] | None]

    @property
    def reference(self) -> str:
        """The faster reference: the one the subject is furthest behind (smallest speed ratio)."""
        return min(self.ratios, key=self.ratios.__getitem__)

    @property
    def ratio(self) -> float:
        """The gate statistic of the deciding attempt."""
        return self.ratios[self.reference]

    @property
    def passed(self) -> bool:
        """True when the subject reaches `min_speed` of the faster reference's speed."""
        return self.ratio >= self.rule.min_speed

    def message(self) -> str:
        """One paragraph naming the model, the measured ratio with its 95% interval, and the rule."""
        verdict = "within" if self.passed else "SLOWER than allowed:"
        times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.median_ms.items())
        others = ", ".join(f"{speed_label(ref, self.subject)} {r:.3f} ({self._ci(ref)})" for ref, r in self.ratios.items())
        attempts = ", ".join(f"{r:.3f}" for r in self.history)
        return (
            f"{self.label}: {speed_label(self.reference, self.subject)} = {self.ratio:.3f} ({self._ci(self.reference)}) "
            f"{verdict} floor {self.rule.min_speed:.3f} (all refs: {others}; median step: {times}; "
            f"attempts: {attempts}). Rule: {self.rule.describe()}."
        )

    def _ci(self, reference: str) -> str:
        """A reference's ratio interval as the message writes it, e.g. "95% CI 0.981–1.004"."""
        return f"95% CI {ci_text(self.intervals[reference])}"


def attempt_order(names: list[str], attempt: int) -> list[str]:
    """The candidates' order in attempt `attempt` (0, 1, ...): every attempt starts from another
    candidate, and odd attempts run them backwards, so no attempt repeats another's sequence."""
    shift = attempt % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if attempt % 2 else order


def interleaved_times(steps: Mapping[str, Step], rule: GateRule, attempt: int = 0) -> dict[str, list[float]]:
    """Time candidates interleaved as `rule` says; return name -> per-round seconds per step.

    Candidates warm up and start in `attempt_order`; the starting candidate then rotates each round
    (A B C, B C A, C A B, ...) so no candidate always runs right after the same neighbour. The
    garbage collector is off while timing, as a collection triggered by one candidate's
    allocations would be charged to whichever runs next.
    """
    names = attempt_order(list(steps), attempt)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for name in names:
            for _ in range(rule.warmup):
                steps[name]()
        for r in range(rule.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                step = steps[name]
                start = rule.clock()
                for _ in range(rule.iters):
                    step()
                times[name].append((rule.clock() - start) / rule.iters)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def decide(
    label: str, subject: str, times: Mapping[str, list[float]], rule: GateRule, history: tuple[float, ...] = ()
) -> GateResult:
    """Apply the rule to per-round times of one attempt (pure; `history` = earlier attempts' ratios)."""
    refs = [name for name in times if name != subject]
    if subject not in times or not refs:
        raise UsageError(f"need the subject {subject!r} and at least one reference; got {', '.join(times)}")
    ratios = {
        ref: statistics.median(r / s for s, r in zip(times[subject], times[ref], strict=True)) for ref in refs
    }
    intervals = {ref: ratio_ci(times[ref], times[subject], paired=True) for ref in refs}
    median_ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    return GateResult(label, subject, ratios, median_ms, rule, history + (min(ratios.values()),), intervals)


Rerun = Callable[[int], Mapping[str, list[float]]]


def ratio_gate(
    label: str, subject: str, steps: Mapping[str, Step], rule: GateRule | None = None, rerun: Rerun | None = None
) -> GateResult:
    """Measure `subject` against the other steps; re-measure a failure up to `rule.attempts` times.

    The first attempt times `steps` here. Each later one calls `rerun(attempt)`, which returns the
    per-round times of an independent measurement (interleaved_times with that attempt number, in
    a fresh process); without `rerun` it re-times `steps` here, in the attempt's order. Returns the
    deciding attempt's result (the first pass, or the last failure); the caller asserts
    `result.passed` and shows `result.message()`.
    """
    rule = rule or GateRule()
    history: tuple[float, ...] = ()
    for attempt in range(rule.attempts):
        if attempt and rerun is not None:
            times = rerun(attempt)
        else:
            times = interleaved_times(steps, rule, attempt)
        result = decide(label, subject, times, rule, history)
        if result.passed:
            return result
        history = result.history
    return result
