"""Stage 2: what to measure: cells, precisions, sweep specs and presets."""
