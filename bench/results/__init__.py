"""Stage 7: the results store of a run directory, and the analysis every view of a run shares."""

from bench.results.store import (
    COLUMNS, CONFIG_KEYS, MEASURE_COLUMNS, RESULTS_JSONL, SAMPLES_JSONL, SCHEMA_VERSION, TIMM_COLUMNS,
    ResultWriter, finalize, finished_cell_ids, is_max_batch_search, load, load_samples, ok_rows, ratios,
    timm_table,
)  # fmt: skip

__all__ = [
    "COLUMNS", "CONFIG_KEYS", "MEASURE_COLUMNS", "RESULTS_JSONL", "SAMPLES_JSONL", "SCHEMA_VERSION",
    "TIMM_COLUMNS", "ResultWriter", "finalize", "finished_cell_ids", "is_max_batch_search", "load",
    "load_samples", "ok_rows", "ratios", "timm_table",
]  # fmt: skip
