"""Compare two runs cell by cell: B speed ÷ A and the p50 change, a Mann-Whitney U test on raw samples, a verdict.

Cells are matched on their configuration (arch, impl, batch, image size, precision, layout, compile,
mode), not on device or round, so two GPUs, two torch versions or two commits can be compared.
The raw step times of all rounds of a config are pooled. A config is "regressed" (or "improved")
only when the difference is both statistically significant (p < alpha) and larger than the effect
threshold: with thousands of samples, a 0.3% difference is significant but not interesting.
With very few samples the test cannot reach p < alpha at all (3 against 3: p >= 0.1 whatever the
data), so such a config is "underpowered", not "unchanged": nothing was shown either way. Beside the
test, each B speed ÷ A carries its 95% interval (bench.intervals.ratio_ci: a seeded bootstrap of
each side's median), which says how large the change could be, where the test says only whether
there is one.
Only sweeps of `rvbench run` compare: `scale` and `transfer` runs keep no raw step times and have
configuration fields of their own (world size, strategy, epoch), so they are refused with one line.
This module holds the statistics only; bench.report.compare_page prints and renders them.
"""

from __future__ import annotations

import dataclasses

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from scipy.stats import mannwhitneyu

from bench import results
from bench.columns import MODE_COMMANDS, SWEEP_MODES
from bench.config.cell import config_keys, config_label
from bench.errors import UsageError
from bench.intervals import ratio_ci
from bench.regress import DEFAULT_ALPHA, DEFAULT_THRESHOLD_PCT
from bench.results import is_max_batch_search, load_run

MATCH_KEYS = config_keys(impl=True)  # a configuration and its implementation, on any device
VERDICTS = ("regressed", "improved", "unchanged", "underpowered")


@dataclass(frozen=True)
class CellDelta:
    """One config measured in both runs. `change_pct` is the p50 step-time change B vs A (+ = slower);
    `speed_ci` the 95% interval of B speed ÷ A (throughput_b / throughput_a, the ratio of the medians)."""

    label: str
    p50_a: float
    p50_b: float
    throughput_a: float
    throughput_b: float
    p_value: float
    change_pct: float
    verdict: str  # one of VERDICTS
    speed_ci: tuple[float, float] | None  # None: a side without samples

    @property
    def speed(self) -> float:
        """B speed ÷ A: B's throughput over A's (above 1: B is faster)."""
        return self.throughput_b / self.throughput_a


@dataclass
class Comparison:
    """Everything `rvbench compare` prints and renders (bench.report.compare_page)."""

    run_a: Path
    run_b: Path
    alpha: float
    threshold_pct: float
    about_a: str = ""  # device, torch and commit of each run, for the page header
    about_b: str = ""
    cells: list[CellDelta] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    broken: list[tuple[str, str, str]] = field(default_factory=list)  # (label, status in A, status in B)
    test: str = "Mann-Whitney U on pooled raw step times"  # what each p is, as the text and the page say it

    def counts(self) -> dict[str, int]:
        """Number of compared cells per verdict."""
        return {v: sum(c.verdict == v for c in self.cells) for v in VERDICTS}

    def failure(self, max_regression_pct: float) -> str | None:
        """Why `--fail-on-regression max_regression_pct` trips, or None when it does not.

        It trips on a significant regression beyond the limit, on a cell that worked in A and fails
        in B, and when no config was measured in both runs: an empty comparison proves nothing.
        """
        if any(a == "ok" for _, a, _ in self.broken):
            return "a cell that measured in A fails in B"
        if not self.cells:
            return "no configuration was measured in both runs: nothing could be compared"
        worst = max((c.change_pct for c in self.cells if c.verdict == "regressed"), default=0.0)
        if worst > max_regression_pct:
            return f"a significant regression of {worst:.1f}% exceeds {max_regression_pct:g}%"
        return None


def _label(config: tuple) -> str:
    return config_label(dict(zip(MATCH_KEYS, config)))


def _about(df: pd.DataFrame) -> str:
    """One line naming what a run ran on: device, torch version, commit."""
    row = df.iloc[0]
    device = row.get("env_gpu_name") if isinstance(row.get("env_gpu_name"), str) else row.get("env_cpu")
    return f"{device or row['device']} · torch {row.get('env_torch')} · commit {str(row.get('env_git_commit'))[:12]}"


def _pooled(df: pd.DataFrame, samples: dict[str, list[float]]) -> tuple[dict[tuple, list[float]], dict[tuple, str]]:
    """Per config: pooled samples of its ok rounds, and for configs with no ok round their status."""
    pooled, statuses = {}, {}
    df = df[~is_max_batch_search(df)]
    for config, rows in df.groupby(MATCH_KEYS, sort=True, dropna=False):
        ok = rows[rows["status"] == "ok"]
        merged = [s for cell_id in ok["cell_id"] for s in samples.get(cell_id, [])]
        if merged:
            pooled[config] = merged
        else:
            statuses[config] = "/".join(sorted(set(rows["status"]))) if ok.empty else "ok (no samples)"
    return pooled, statuses


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided Mann-Whitney U p-value any data of these sample sizes can give.

    That is the p-value of two completely separated samples, computed by the same test (and so the
    same exact-or-asymptotic choice) as the real comparison: 2 / C(n_a + n_b, n_a) when exact.
    """
    return float(mannwhitneyu(range(n_a), range(n_a, n_a + n_b), alternative="two-sided").pvalue)


def _verdict(change_pct: float, p_value: float, min_p: float, alpha: float, threshold_pct: float) -> str:
    if min_p >= alpha:
        return "underpowered"
    if p_value >= alpha or abs(change_pct) < threshold_pct:
        return "unchanged"
    return "regressed" if change_pct > 0 else "improved"


def delta(label: str, a_ms: list[float], b_ms: list[float], batch: int, alpha: float = DEFAULT_ALPHA,
          threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> CellDelta:
    """Compare two samples of step times (ms) of one config: medians, Mann-Whitney U, verdict, and the 95%
    interval of B speed ÷ A (`ratio_ci` of A's times over B's: the ratio of the medians).

    The verdict rule of every comparison here (runs, and commits in the A/B gate): "regressed" or
    "improved" only when p < alpha and the median moved by at least threshold_pct; "underpowered"
    when samples this small can never reach p < alpha.
    """
    p50_a, p50_b = statistics.median(a_ms), statistics.median(b_ms)
    p_value = float(mannwhitneyu(a_ms, b_ms, alternative="two-sided").pvalue)
    change = (p50_b / p50_a - 1.0) * 100.0
    verdict = _verdict(change, p_value, smallest_p(len(a_ms), len(b_ms)), alpha, threshold_pct)
    return CellDelta(label, p50_a, p50_b, batch * 1000.0 / p50_a, batch * 1000.0 / p50_b, p_value, change, verdict,
                     ratio_ci(a_ms, b_ms))


def holm(cells: list[CellDelta], min_ps: list[float], alpha: float = DEFAULT_ALPHA,
         threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> list[CellDelta]:
    """`cells` tested together as one family (a gate's benchmarks), each p replaced by its Holm-adjusted p and the
    verdict decided again on it (`min_ps`: each cell's smallest possible raw p, `smallest_p`).

    Holm's step-down: the k-th smallest of m p-values is multiplied by m - k + 1, kept monotone. A verdict on
    any of m unchanged cells then has probability at most alpha, where m tests at alpha each give up to m x alpha.
    """
    m = len(cells)
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: cells[i].p_value)):
        running = max(running, min(1.0, (m - rank) * cells[i].p_value))
        adjusted[i] = running
    floor = m * min(min_ps, default=1.0)  # no adjusted p is below m x the smallest raw p any cell can give
    return [dataclasses.replace(c, p_value=p, verdict=_verdict(c.change_pct, p, min(1.0, max(low, floor)), alpha,
                                                               threshold_pct))
            for c, p, low in zip(cells, adjusted, min_ps)]


def _check_sweep(df: pd.DataFrame, run: Path) -> None:
    """UsageError for a run of `rvbench scale` or `transfer`: their rows keep no raw step times to test,
    and their configurations differ in fields a sweep's do not have (world size, strategy, epoch), so
    matching them as sweep cells would pool rows that are not the same configuration."""
    foreign = sorted(set(df["mode"].dropna()) - set(SWEEP_MODES), key=str)
    if foreign:
        command = MODE_COMMANDS.get(foreign[0])
        made_by = f"an `rvbench {command}` run" if command else f"not a sweep (mode {foreign[0]})"
        raise UsageError(f"{run} is {made_by}; compare compares `rvbench run` sweeps, cell by cell on their "
                         f"step times; see {run / 'index.html'} for its results")


def _clocks(df: pd.DataFrame) -> set[str]:
    """The clocks (`timer`) of a run's ok rows; a row from before the column timed wall time, or CUDA events."""
    ok = df[df["status"] == "ok"]
    timers = ok["timer"] if "timer" in ok else [None] * len(ok)
    return {t if isinstance(t, str) else "cuda-events" if str(d).startswith("cuda") else "wall"
            for t, d in zip(timers, ok["device"])}


def compare_runs(
    run_a: Path, run_b: Path, alpha: float = DEFAULT_ALPHA, threshold_pct: float = DEFAULT_THRESHOLD_PCT
) -> Comparison:
    """Match the configs of two run directories and classify each one measured in both; UsageError when
    either is not a sweep of `rvbench run`, or when their steps were timed by different clocks (`timer`)."""
    df_a, df_b = load_run(Path(run_a)), load_run(Path(run_b))
    _check_sweep(df_a, Path(run_a))
    _check_sweep(df_b, Path(run_b))
    if _clocks(df_a) != _clocks(df_b):
        raise UsageError(f"{run_a} timed its steps in {', '.join(sorted(_clocks(df_a)))} time and {run_b} in "
                         f"{', '.join(sorted(_clocks(df_b)))} time; times of different clocks do not compare "
                         "(rvbench run --process-time chooses process-cpu)")
    pooled_a, status_a = _pooled(df_a, results.load_samples(run_a))
    pooled_b, status_b = _pooled(df_b, results.load_samples(run_b))
    out = Comparison(Path(run_a), Path(run_b), alpha, threshold_pct, _about(df_a), _about(df_b))
    configs_a = set(pooled_a) | set(status_a)
    configs_b = set(pooled_b) | set(status_b)
    for config in sorted(configs_a | configs_b, key=str):
        label = _label(config)
        if config not in configs_b:
            out.only_a.append(label)
        elif config not in configs_a:
            out.only_b.append(label)
        elif config in pooled_a and config in pooled_b:
            batch = dict(zip(MATCH_KEYS, config))["batch_size"]
            out.cells.append(delta(label, pooled_a[config], pooled_b[config], batch, alpha, threshold_pct))
        else:
            out.broken.append((label, status_a.get(config, "ok"), status_b.get(config, "ok")))
    out.cells.sort(key=lambda c: (VERDICTS.index(c.verdict), -abs(c.change_pct)))
    return out
