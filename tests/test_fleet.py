"""The report's per-GPU-model comparison (bench.report.sections.fleet) on a synthetic run whose rounds ran on
two GPU models, as a Ray cluster of two node types records them."""

from __future__ import annotations

import json

from report_fixture import write_run

from bench.config.cell import config_keys
from bench.report.sections.fleet import fleet_table, per_model
from bench.results import load


def _two_models(run_dir):
    """Round 0 on an A100, round 1 on an H100 that is exactly twice as fast."""
    path = run_dir / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    key = lambda r: (*(r[k] for k in config_keys(impl=True)), r["find_max_batch"])
    a100 = {key(r): r["throughput"] for r in rows if r["round"] == 0}
    for row in rows:
        h100 = row["round"] == 1
        row["env_gpu_name"] = "NVIDIA H100 80GB HBM3" if h100 else "NVIDIA A100-SXM4-80GB"
        if h100 and row["throughput"] is not None and a100.get(key(row)) is not None:
            row["throughput"] = 2 * a100[key(row)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "results.parquet").unlink(missing_ok=True)


def test_per_model_medians_side_by_side(tmp_path):
    run_dir = write_run(tmp_path / "run", archs=("resnet50",), impls=("rv", "timm"), batches=(8,),
                        precisions=("fp32",), compile_modes=())
    assert fleet_table(load(run_dir)).rows == []  # one GPU model: no comparison
    _two_models(run_dir)
    df = load(run_dir)
    wide = per_model(df)
    a100, h100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
    both = wide.dropna(subset=[a100, h100])
    # Medians per model: had the models' rounds been mixed, the H100 column would not be exactly 2x.
    assert len(both) >= 2 and ((both[h100] / both[a100]).round(9) == 2).all()
    assert set(both["impl"]) == {"rv", "timm"}
    table = fleet_table(df)
    assert table.columns[-1] == f"{h100} speed ÷ {a100}"
    assert {row[-1] for row in table.rows} <= {"2.00", "–"} and "2.00" in {row[-1] for row in table.rows}
