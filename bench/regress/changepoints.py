"""Steps in a series of runs: where one configuration's throughput moved, by how much, and why.

A series (bench.regress.history) is one configuration on one machine class, one point per run in commit
order: the run's median throughput over rounds. The steps are found as asv finds them, in three moves:

1. Candidates: ruptures' PELT on the log throughput with the L2 cost (a change in mean), rather than a
   port of asv's step detection. PELT solves the same penalised segmentation exactly, in linear time,
   from a maintained library; asv's Potts solver picks its penalty from the series alone, and here the
   penalty is better known: the noise measured within each run (below). Log, so a step is a ratio
   and a +5% reads the same at batch 1 as at batch 256.
2. The penalty comes from within-run noise: each run's 95% interval of its median throughput
   (bench.results.analysis.config_medians, from its rounds' step_ms_p50_ci_low/high, or, for rows made
   before rows carried them, from its raw samples) gives the variance of that run's log median; the
   series' noise is the median of those variances, so one odd run does not set it, or the run-to-run
   spread when that is larger (`noise_variance`): a machine whose speed wanders between runs makes
   steps no code made. On this project's 2-core CI VM three quiet `make bench` runs minutes apart
   differed by up to 10% per configuration, and within-run noise alone called 37 steps in them. The
   spread is the median absolute difference of consecutive runs' log throughputs, scaled to a standard
   deviation (median |d| = 0.6745 sqrt(2) sigma for normal noise): a median, so the steps themselves
   (a few of the differences) do not set it. The penalty is PENALTY_BICS times BIC's (2 ln n noise
   variances per change point: its place and its new level).
   In simulated 6-run series, once with 1% and once with 10% spread within runs, twice BIC kept
   99% of the noisy series free of any step while a 3% step in the quiet one was always found.
3. Each candidate is confirmed on the raw samples: a Mann-Whitney U test of the pooled samples of the
   runs of the segment before it against those of the segment after it (segments bounded by the
   neighbouring candidates), with the verdict rule of `rvbench compare` (bench.regress.compare.delta:
   p < alpha and a median change of at least the threshold). The weakest unconfirmed candidate is
   dropped, its neighbours' segments merge, and the rest are tested again until all stand. Pooling a
   segment, rather than testing the two adjacent runs alone, gives the test the samples of every
   run at that level, so a step is confirmed by everything measured on either side of it.

Each step names why it may have happened, from the last run before it and the first run after it:
`code` (the commit changed, or either tree was dirty, and no ENVIRONMENT field did), `environment`
(an ENVIRONMENT field changed, the code did not), `both`, or `unexplained` (neither: the machine
itself, or chance). A field only one of the two runs recorded (a run made before it existed) is not
counted as changed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ruptures

from bench.regress.compare import CellDelta, delta

# The env_* columns whose change can move a step time (bench.columns' "environment" group, less the commit,
# its dirtiness, the time stamp, and fvcore, which only counts FLOPs).
ENVIRONMENT = ("env_torch", "env_torchvision", "env_timm", "env_cuda", "env_cudnn", "env_gpu_name", "env_driver",
               "env_cpu", "env_cpu_governor", "env_threads", "env_cpu_affinity", "env_os", "env_python", "env_host")
PENALTY_BICS = 2.0
WHYS = ("code", "environment", "both", "unexplained")
_Z_95 = 1.959964  # a 95% interval's half width in standard deviations
_MAD_NORMAL = 0.6744898  # the median of |z| for a standard normal z


@dataclass(frozen=True)
class Point:
    """One run in a series: its median throughput over rounds and what the step tests need of it."""

    run: str  # the run directory
    position: int  # the run's place among all runs read, in commit order
    commit: str | None
    dirty: bool | None
    throughput: float  # images/s, the median over the run's ok rounds
    log_var: float  # the variance of log(throughput) within the run (its interval); nan when unknown
    cell_ids: tuple[str, ...]  # the run's ok cells of this configuration: the keys of their samples
    env: dict[str, object] = field(default_factory=dict)  # the ENVIRONMENT fields of its rows


@dataclass(frozen=True)
class Step:
    """A confirmed step between two consecutive runs of a series."""

    before: Point  # the last run of the level before the step
    after: Point  # the first run of the new level
    change_pct: float  # throughput after ÷ before - 1, in percent (pooled medians of the two segments)
    p_value: float  # Mann-Whitney U, pooled samples of the segments before and after
    speed_ci: tuple[float, float] | None  # 95% interval of throughput after ÷ before
    why: str  # one of WHYS
    changed: tuple[str, ...]  # the ENVIRONMENT fields that changed at the step

    @property
    def regressed(self) -> bool:
        """Whether throughput fell at the step."""
        return self.change_pct < 0


def log_variance(throughput: float, low: float, high: float) -> float:
    """The variance of log(throughput) that a 95% interval [low, high] of the throughput implies; nan without one."""
    if not all(v > 0 for v in (throughput, low, high)):  # also false for nan
        return math.nan
    return ((math.log(high) - math.log(low)) / (2 * _Z_95)) ** 2


MIN_RUNS = 2  # the fewest runs of a level (`candidates`)


def noise_variance(points: Sequence[Point]) -> float | None:
    """The variance of a run's log throughput that the penalty assumes (module docstring, move 2): the
    median within-run variance, or the run-to-run spread where larger; None without any within-run one."""
    variances = [p.log_var for p in points if not math.isnan(p.log_var)]
    if not variances:
        return None
    differences = np.abs(np.diff(np.log([p.throughput for p in points])))
    spread = float(np.median(differences)) / (_MAD_NORMAL * math.sqrt(2)) if differences.size >= 2 else 0.0
    return max(statistics.median(variances), spread ** 2)


def candidates(points: Sequence[Point]) -> list[int]:
    """PELT's change points of the log throughputs: the indices of the first point of each new level, every level
    at least MIN_RUNS runs long: one run off its neighbours is that run's noise (a shared machine's moment), not a
    step, so a step in the newest run is reported once the next run confirms it."""
    noise = noise_variance(points)
    if len(points) < 2 or noise is None:
        return []
    penalty = PENALTY_BICS * 2 * math.log(len(points)) * noise
    y = np.log([p.throughput for p in points]).reshape(-1, 1)
    return ruptures.Pelt(model="l2", min_size=MIN_RUNS, jump=1).fit(y).predict(pen=penalty)[:-1]


# Each run's raw step times (ms) by cell id, by run directory (bench.results.load_samples of each).
Samples = Mapping[str, Mapping[str, list[float]]]


def _pooled(points: Sequence[Point], samples: Samples) -> list[float]:
    return [s for p in points for cell_id in p.cell_ids for s in samples[p.run].get(cell_id, [])]


def confirmed(points: Sequence[Point], samples: Samples, batch: int, alpha: float,
              threshold_pct: float) -> dict[int, CellDelta]:
    """The candidates that the raw samples confirm, each with its test (module docstring, move 3); a
    candidate with no samples on one side cannot be confirmed."""
    kept = candidates(points)
    while kept:
        edges = [0, *kept, len(points)]
        tests: dict[int, CellDelta | None] = {}
        for i, k in enumerate(kept, 1):
            before, after = _pooled(points[edges[i - 1]:k], samples), _pooled(points[k:edges[i + 1]], samples)
            tests[k] = delta("", before, after, batch, alpha, threshold_pct) if before and after else None
        weak = {k: math.inf if t is None else t.p_value for k, t in tests.items()
                if t is None or t.verdict not in ("regressed", "improved")}
        if not weak:
            return {k: t for k, t in tests.items() if t is not None}
        kept.remove(max(weak, key=weak.__getitem__))
    return {}


def _value(v: object) -> object:
    """A recorded field as compared: None when missing, a float for any number (16 and 16.0 are the same)."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


def why(before: Point, after: Point) -> tuple[str, tuple[str, ...]]:
    """Why a step may have happened between two runs (module docstring): one of WHYS, and the fields that changed."""
    changed = tuple(f for f in ENVIRONMENT if None not in (_value(before.env.get(f)), _value(after.env.get(f)))
                    and _value(before.env.get(f)) != _value(after.env.get(f)))
    code = before.commit != after.commit or bool(before.dirty) or bool(after.dirty)
    if code:
        return ("both" if changed else "code"), changed
    return ("environment" if changed else "unexplained"), changed


def steps(points: Sequence[Point], samples: Samples, batch: int, alpha: float, threshold_pct: float) -> list[Step]:
    """The confirmed steps of a series, in run order."""
    out = []
    for k, test in sorted(confirmed(points, samples, batch, alpha, threshold_pct).items()):
        reason, changed = why(points[k - 1], points[k])
        out.append(Step(points[k - 1], points[k], (test.speed - 1) * 100, test.p_value, test.speed_ci, reason,
                        changed))
    return out
