"""Stage 6: profiling one cell: operator categories, per-module time, roofline."""
