"""The 95% intervals rvbench shows, each computed one way, in one place (numpy and scipy only: no torch,
no pandas, so the measurement, the analysis and the comparisons can all import it).

- `median_ci`: a sample's median (a cell's median step): the binomial order-statistic interval, exact
  for any continuous distribution; `relative_ci`: how far an interval reaches from its median, as a share.
- `rounds_median_ci`: a configuration's median over rounds (every view's number), by a hierarchical
  bootstrap over the rounds from each round's own median and interval.
- `ratio_ci`: a ratio of medians (`rvbench compare`, the A/B gate) or the median of paired ratios (the
  same-run ratio gate); `bootstrap_medians` draws a sample's bootstrap medians exactly, without resampling.

Every bootstrap here is seeded (BOOTSTRAP_SEED): the same data give the same interval, in every view
and on every call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binom, norm

CI_LEVEL = 0.95
# Bootstrap draws: the interval's ends move by well under 1% of its width from one seed to another.
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
_TAILS = (100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2)  # percentiles of the interval's ends


def median_ci(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the median: the order statistics x(j), x(n-j+1) whose
    ranks a Binomial(n, 1/2) count keeps the median between with at least `level` probability (no
    assumption about the shape of the step-time distribution). None below 6 samples, too few for 95%.
    """
    n = samples.size
    j = int(binom.ppf((1 - level) / 2, n, 0.5))  # P(Binomial < j) < (1 - level) / 2
    if j < 1:
        return None
    ordered = np.sort(samples)
    return float(ordered[j - 1]), float(ordered[n - j])


def relative_ci(median: float, ci: tuple[float, float] | None) -> float | None:
    """How far the interval reaches from the median, as a share of it: the interval lies within ±this."""
    if ci is None or median <= 0:
        return None
    return max(median - ci[0], ci[1] - median) / median


def rounds_median_ci(medians: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                     draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """The 95% interval of the median over rounds of `medians`, given each round's own interval (`lows`, `highs`).

    One round: its own interval. Several: a hierarchical bootstrap, as the rounds were measured: draw
    the rounds with replacement; for each drawn round, draw its median from its own sampling
    distribution; take the median over the drawn rounds (the statistic the views show); the interval
    is the 2.5 and 97.5 percentiles of `draws` such medians. It widens with the spread between the
    rounds (which one round's interval cannot see: a machine that drifts between rounds) as well as
    with each round's own uncertainty. None when a round has no interval (fewer than 6 samples, or
    a run made before rows carried one): nothing can be said.

    A round's sampling distribution is taken from its row, not from its raw samples: a split normal
    around its median, with the standard deviation (median - low) / 1.96 below and (high - median) / 1.96
    above, so its own 2.5 and 97.5 percentiles are exactly the round's interval and a skewed interval
    stays skewed. Working from the rows keeps every view on the results table alone (a run's
    samples.jsonl can be large, and a results.csv may travel without it) at a few milliseconds per
    configuration. Rounds are taken in the order given; seeded, so the same rounds give the same interval.
    """
    median, low, high = (np.asarray(v, dtype=np.float64) for v in (medians, lows, highs))
    if median.size == 0 or np.isnan(np.concatenate([median, low, high])).any():
        return None
    if median.size == 1:
        return float(low[0]), float(high[0])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, median.size, size=(draws, median.size))
    z = rng.standard_normal((draws, median.size))
    z_975 = norm.ppf(_TAILS[1] / 100)
    sd = np.where(z < 0, (median - low)[pick], (high - median)[pick]) / z_975
    drawn = np.median(median[pick] + z * sd, axis=1)
    ci = np.percentile(drawn, _TAILS)
    return float(ci[0]), float(ci[1])


def bootstrap_medians(samples: Sequence[float], draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` medians of bootstrap resamples of `samples` (n values drawn with replacement), drawn exactly
    without resampling: O(n) once, then O(log n) a draw, where resampling costs O(n) a draw.

    A resample's r-th smallest value is at most the k-th smallest sample exactly when at least r of its
    n draws fall on the k smallest, a Binomial(n, k/n) count; so that order statistic is drawn by
    inverting that law. An odd n's median is the middle order statistic; an even n's is the mean of
    the two middle ones, each drawn from its exact law with one shared uniform (they are neighbours,
    so nearly comonotone; the joint law is otherwise not needed).
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size
    share = np.arange(1, n + 1) / n
    u = rng.random(draws)

    def order_statistic(rank: int) -> np.ndarray:
        cdf = binom.sf(rank - 1, n, share)  # P(the resample's rank-th smallest <= ordered[k - 1])
        return ordered[np.minimum(np.searchsorted(cdf, u), n - 1)]

    lower, upper = (n + 1) // 2, n // 2 + 1
    return order_statistic(lower) if lower == upper else (order_statistic(lower) + order_statistic(upper)) / 2


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], paired: bool = False,
             draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """The 95% interval of a ratio every comparison reports; None when it cannot be given.

    Unpaired (two runs, or two commits' processes): the ratio of the medians, median(numerator) /
    median(denominator), by a bootstrap of each side's median (`bootstrap_medians`, the sides
    independent), seeded; None when a side is empty. Its percentile interval reflects the noise of
    the samples as given: the compared medians' own, as the Mann-Whitney test beside it does.
    Paired (interleaved rounds of one process): the median of the per-pair ratios
    numerator[i] / denominator[i], by `median_ci` on those ratios (exact, distribution-free); None
    below 6 pairs. With step times as numerator and denominator, the first is A's and the second B's
    for B speed ÷ A.
    """
    top, bottom = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if paired:
        return median_ci(top / bottom)
    if top.size == 0 or bottom.size == 0:
        return None
    rng = np.random.default_rng(seed)
    ratios = bootstrap_medians(top, draws, rng) / bootstrap_medians(bottom, draws, rng)
    ci = np.percentile(ratios, _TAILS)
    return float(ci[0]), float(ci[1])


def ci_text(ci: tuple[float, float] | None, digits: int = 3) -> str:
    """How every view writes an interval of a ratio, e.g. "0.981–1.004"; an en dash when there is none."""
    return "–" if ci is None else f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}"
