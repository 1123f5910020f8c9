"""The results store and analysis: durable appends, torn-line tolerance, tidy tables, timm export, ratios,
the best config."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import results
from bench.columns import COLUMNS
from bench.results import TIMM_COLUMNS, ResultWriter, finalize, finished_cell_ids, load, load_samples, timm_table
from bench.results.analysis import best_configs, config_medians


def _row(cell_id: str, impl: str, rnd: int, throughput: float, mode: str = "inference", status: str = "ok") -> dict:
    return {
        "schema_version": results.SCHEMA_VERSION, "run_id": "r", "cell_id": cell_id, "arch": "resnet18",
        "impl": impl, "batch_size": 2, "image_size": 32, "precision": "fp32", "channels_last": False,
        "compile": "none", "mode": mode, "device": "cpu", "round": rnd, "find_max_batch": False,
        "status": status, "message": "", "throughput": throughput, "throughput_wall": throughput * 0.9,
        "step_ms_mean": 2000 / throughput, "step_ms_p50": 2000 / throughput, "gflops_per_image": 0.1,
        "params_total": 11_689_512, "env_torch": "2.x",
    }


def test_torn_last_line_is_skipped_with_warning(tmp_path):
    with open(tmp_path / "results.jsonl", "w") as fh:
        fh.write(json.dumps(_row("a", "rv", 0, 100.0)) + "\n")
        fh.write(json.dumps(_row("b", "timm", 0, 50.0))[:40])  # killed mid-write
    with pytest.warns(UserWarning, match="torn"):
        df = load(tmp_path)
    assert list(df["cell_id"]) == ["a"]
    assert {c.name for c in COLUMNS} <= set(df.columns)  # every declared column, null where absent
    assert pd.isna(df.loc[0, "mem_peak_alloc_mb"])


def test_writer_appends_after_torn_line_without_merging(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(_row("a", "rv", 0, 1.0)) + "\n{\"cell_id\": \"b")
    writer = ResultWriter(tmp_path)
    writer.write(_row("c", "rv", 0, 2.0), samples_ms=[1.0, 2.0])
    writer.write(_row("d", "rv", 0, 3.0, status="oom"), samples_ms=None)
    writer.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["cell_id"] for line in lines] == ["a", "c", "d"]
    assert finished_cell_ids(tmp_path) == {"a", "c", "d"}
    assert load_samples(tmp_path) == {"c": [1.0, 2.0]}


def test_finalize_writes_tidy_tables_and_timm_layout(tmp_path):
    writer = ResultWriter(tmp_path)
    for row in [_row("a", "rv", 0, 100.0), _row("b", "timm", 0, 80.0),
                _row("c", "rv", 0, 20.0, mode="train"), _row("d", "timm", 0, 1.0, status="error")]:
        writer.write(row, samples_ms=[1.0])
    writer.close()
    df = finalize(tmp_path)
    assert len(df) == 4
    parquet = load(tmp_path)  # now from parquet
    assert (tmp_path / "results.parquet").exists() and len(parquet) == 4
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4
    timm = pd.read_csv(tmp_path / "results_timm.csv")
    assert list(timm.columns[: len(TIMM_COLUMNS)]) == TIMM_COLUMNS
    rv = timm[timm["impl"] == "rv"].iloc[0]
    assert rv["model"] == "resnet18"
    assert rv["infer_samples_per_sec"] == pytest.approx(90.0)  # timm: samples over timed wall time
    assert rv["train_samples_per_sec"] == pytest.approx(18.0)  # train cell of the same config
    assert rv["infer_gmacs"] == pytest.approx(0.05) and rv["param_count"] == pytest.approx(11.69)
    assert pd.isna(rv["infer_macts"])
    assert len(timm[timm["impl"] == "timm"]) == 1  # the error row is not exported


def test_timm_export_rounds_as_timm_and_skips_unknown_precisions():
    """GMACs and params in millions to 2 decimals, as timm's published CSVs; samples/s and step time as measured.
    A row whose precision rvbench does not know (a hand-merged file) is left out, not an error."""
    rows = [{**_row("a", "rv", 0, 123.456789), "gflops_per_image": 8.2137, "params_total": 25_557_032},
            {**_row("b", "rv", 0, 10.0), "precision": "fp8"}]
    out = timm_table(pd.DataFrame(rows))
    assert len(out) == 1
    assert (out["infer_gmacs"].iloc[0], out["param_count"].iloc[0]) == (4.11, 25.56)
    assert out["infer_samples_per_sec"].iloc[0] == pytest.approx(123.456789 * 0.9, rel=1e-12)


def test_timm_export_keeps_compiled_rows_without_freezing():
    # timm's benchmark.py --torchcompile does not freeze: only the plain compiled row is comparable.
    rows = [{**_row(mode, "rv", 0, 10.0), "compile": mode} for mode in ("none", "default", "default-freeze")]
    timm = results.timm_table(pd.DataFrame(rows))
    assert sorted(timm["compile"]) == ["default", "none"]


def test_ratios_per_round_then_median_and_iqr():
    rows = []
    for rnd, (rv, tv) in enumerate([(100.0, 50.0), (90.0, 60.0), (120.0, 40.0)]):
        rows += [_row(f"rv{rnd}", "rv", rnd, rv), _row(f"tv{rnd}", "torchvision", rnd, tv)]
    ratio = results.ratios(results.store._tidy(rows))
    assert list(ratio["reference"]) == ["torchvision"]  # no timm rows -> no rv/timm ratio
    per_round = pd.Series([2.0, 1.5, 3.0])
    assert ratio.loc[0, "ratio_median"] == pytest.approx(per_round.median())
    assert ratio.loc[0, "ratio_iqr"] == pytest.approx(per_round.quantile(0.75) - per_round.quantile(0.25))
    assert ratio.loc[0, "n_rounds"] == 3


def test_load_prefers_jsonl_when_a_resumed_run_appended_after_finalize(tmp_path):
    writer = ResultWriter(tmp_path)
    writer.write(_row("a", "rv", 0, 100.0), samples_ms=[1.0])
    finalize(tmp_path)
    assert list(load(tmp_path)["cell_id"]) == ["a"]
    writer.write(_row("b", "timm", 0, 50.0), samples_ms=[2.0])  # resumed, then killed before finalize
    assert list(load(tmp_path)["cell_id"]) == ["a", "b"]


def test_finalize_survives_a_parquet_failure_and_leaves_no_temp_files(tmp_path, monkeypatch):
    ResultWriter(tmp_path).write(_row("a", "rv", 0, 100.0), samples_ms=[1.0])

    def broken(self, *args, **kwargs):
        raise ValueError("mixed types")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.warns(UserWarning, match="results.parquet not written"):
        df = finalize(tmp_path)
    assert list(df["cell_id"]) == ["a"]
    assert not (tmp_path / "results.parquet").exists()
    assert list(pd.read_csv(tmp_path / "results.csv")["cell_id"]) == ["a"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert list(load(tmp_path)["cell_id"]) == ["a"]


def test_best_config_is_the_fastest_of_any_impl_whatever_the_row_order():
    rows = [_row("a", "rv", 0, 100.0), _row("b", "timm", 0, 120.0), _row("c", "timm", 1, 130.0),
            _row("d", "torchvision", 0, 50.0, mode="train"), _row("e", "rv", 0, 50.0, mode="train")]
    medians = config_medians(results.store._tidy(rows))
    assert medians.loc[medians["impl"] == "timm", ["throughput", "rounds"]].values.tolist() == [[125.0, 2]]
    best = best_configs(medians)
    # timm wins inference although rv ran; the train tie goes to the first impl in key order.
    assert best[["mode", "impl"]].values.tolist() == [["inference", "timm"], ["train", "rv"]]
    assert best.equals(best_configs(medians.iloc[::-1]))
    assert best_configs(medians, by=["arch"])[["mode", "impl"]].values.tolist() == [["inference", "timm"]]
