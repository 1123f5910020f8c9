"""Step-time benchmarks of the CI model set, for pytest-benchmark's saved-baseline comparison.

Each (arch, impl, mode) is warmed up explicitly, then timed with `benchmark.pedantic`: rounds
of one synchronised step, no warm-up or compilation inside the timed rounds. On CPU torch runs
one thread (conftest's CPU_THREADS) and `make gate` times with `--benchmark-timer
time.process_time`, CPU time that other jobs on the machine do not inflate; on CUDA each step
synchronises and the timer is wall time. `make gate` compares the medians with a baseline saved
on the same machine class; under `make test` (`--benchmark-disable`) each runs one step, which
checks that the workload executes.
"""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from bench.models import ModelEntry

WARMUP_STEPS = 3
ROUNDS = 20


def test_step_time(benchmark: BenchmarkFixture, make_workload, ci_entry: ModelEntry, ci_mode: str) -> None:
    """Time one inference forward or one train step; extra_info carries FLOPs, params and set-up."""
    work = make_workload(ci_entry, ci_mode)
    assert work.info["gflops_per_step"] > 0 and work.info["params_total"] > 0
    benchmark.group = f"{ci_entry.arch} {ci_mode}"
    benchmark.extra_info.update(work.info)
    if benchmark.enabled:
        for _ in range(WARMUP_STEPS):
            work.step()
    benchmark.pedantic(work.step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
