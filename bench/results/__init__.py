"""Stage 7: the results store of a run directory, and the analysis every view of a run shares."""

from bench.results.analysis import CONFIG_KEYS, is_max_batch_search, ok_rows, ratios
from bench.results.store import (
    RESULTS_JSONL, RESULTS_PARQUET, SAMPLES_JSONL, SCHEMA_VERSION, ResultWriter, check_run_dir, current_parquet,
    finalize, finished_cell_ids, is_run_dir, load, load_run, load_samples, update_latest, with_cell_defaults,
    write_atomically,
)  # fmt: skip
from bench.results.timm import TIMM_COLUMNS, timm_table

__all__ = [
    "CONFIG_KEYS", "RESULTS_JSONL", "RESULTS_PARQUET", "SAMPLES_JSONL", "SCHEMA_VERSION",
    "TIMM_COLUMNS", "ResultWriter", "check_run_dir", "current_parquet", "finalize", "finished_cell_ids",
    "is_max_batch_search", "is_run_dir", "load", "load_run", "load_samples", "ok_rows", "ratios", "timm_table",
    "update_latest", "with_cell_defaults", "write_atomically",
]  # fmt: skip
