"""Self-checks of the harness on real hardware: `rvbench gpu-check` (bench.checks.gpu)."""
