"""The 95% intervals rvbench shows, each computed one way, in one place (numpy and scipy only: no torch,
no pandas, so the measurement, the analysis and the comparisons can all import it).

`median_ci` is the interval of a sample's median: the binomial order-statistic one, exact for any
continuous distribution; `relative_ci` how far an interval reaches from its median, as a share.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

CI_LEVEL = 0.95


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
