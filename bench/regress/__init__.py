"""Stage 9: regressions: run-to-run comparison with a significance test, and same-run ratio gates."""
