"""How a run's backend rows are read back: the Backends table beside eager, the best configuration and the fastest
variant never a backend whose output failed parity (rows written by hand with make_row, since parity failing on a
real backend takes a broken export: tests/test_backends.py makes one), and real backend rows through `--resume`
and `rvbench compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.cli import main
from bench.config.cell import Cell
from bench.report.data import per_config
from bench.report.sections.backends import backends_table, fastest_backends
from bench.results.analysis import best_configs, config_medians
from bench.results.rows import make_row
from bench.results.store import COLUMN_ORDER

CELL = {"arch": "resnet18", "impl": "rv", "batch_size": 2, "image_size": 64, "precision": "fp32", "mode": "inference"}


def _row(backend: str, ms: float, parity_ok: bool | None, rnd: int = 0) -> dict:
    deploy = {} if parity_ok is None else {"parity_ok": parity_ok, "parity_cos": 1.0 if parity_ok else 0.5,
                                           "parity_top1": 1.0 if parity_ok else 0.0, "parity_max_abs": 1e-6}
    cell = Cell(**CELL, backend=backend, round=rnd)
    row = make_row("run", cell.cell_id, cell, "ok", find_max_batch=False, step_ms_p50=ms, step_ms_p99=ms * 1.1,
                   throughput=2000.0 / ms, **deploy)
    return {name: row.get(name) for name in COLUMN_ORDER}


def test_a_backend_that_failed_parity_is_shown_failing_and_never_the_best() -> None:
    df = pd.DataFrame([_row("eager", 10.0, None), _row("onnxruntime", 8.0, True), _row("openvino", 4.0, False)])
    configs = per_config(df)
    table = backends_table(configs, df)
    by_backend = {row[4]: row for row in table.rows}
    assert list(by_backend) == ["eager", "onnxruntime", "openvino"]
    assert by_backend["onnxruntime"][6] == "1.25" and by_backend["onnxruntime"][-1] == "pass"
    assert by_backend["openvino"][6] == "2.50" and by_backend["openvino"][-1] == "FAIL"
    (line,) = fastest_backends(configs, df)
    assert line.startswith("resnet18 bs2 64px: fp32 +onnxruntime (rv) 250.0 img/s, 1.25x eager")
    (best,) = best_configs(config_medians(df)).itertuples()
    assert best.backend == "onnxruntime" and best.throughput == 250.0


def test_a_run_without_backends_has_no_backends_section() -> None:
    df = pd.DataFrame([_row("eager", 10.0, None)])
    assert backends_table(per_config(df), df).rows == [] and fastest_backends(per_config(df), df) == []


def test_backend_rows_survive_resume_and_compare(tmp_path: Path, capsys) -> None:
    """A real run of eager and openvino cells; its openvino row dropped (as if the run had stopped before it):
    `--resume` measures that cell again, and only it; `rvbench compare` of the run with itself matches the
    backend's cells with the backend's, eager's with eager's."""
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path), "--models", "resnet18",
                 "--impls", "rv", "--batch-sizes", "1", "--image-size", "64", "--backends", "eager,openvino"]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    results = run_dir / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    kept = [r for r in rows if r["backend"] == "eager"]
    results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run_dir / "results.parquet").unlink(missing_ok=True)
    assert main(["run", "--resume", str(run_dir)]) == 0
    after = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["backend"] for r in after) == ["eager", "openvino"]
    assert [r["cell_id"] for r in after if r["backend"] == "eager"] == [kept[0]["cell_id"]]
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp.html")]) == 0
    printed = capsys.readouterr().out
    assert "fp32 +openvino" in printed and "2 cells compared" in printed
