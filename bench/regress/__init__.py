"""Stage 9: regressions: run-to-run comparison with a significance test, and same-run ratio gates.

Importing the package is cheap: the comparison's defaults below appear in `rvbench compare --help`;
the comparison itself (pandas, scipy) is bench.regress.compare.
"""

# Significance level of the Mann-Whitney U test of `rvbench compare` and `make gate-ab`.
DEFAULT_ALPHA = 0.01
# Smallest p50 change (%) that counts as improved or regressed.
DEFAULT_THRESHOLD_PCT = 2.0
# A significant p50 slowdown beyond this (%) fails `make gate-ab` and makes a commit bad for `rvbench bisect`.
FAIL_PCT = 10.0
