"""Deployment backends (bench.config.backends, bench.execute.backends) on the CPU, with the real ONNX Runtime and
OpenVINO: rows within parity of eager fp32, a broken export flagged, bad input refused with one line, eager cell
ids unchanged, and a tiny `rvbench run` whose timm CSV keeps the eager rows only."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import columns
from bench.cli import main
from bench.config.backends import PARITY, problem
from bench.config.cell import Cell, config_label
from bench.config.sweep import TimingConfig, build_spec, expand
from bench.execute import backends
from bench.errors import UsageError
from bench.measure.cell import measure_cell
from bench.runner import client, worker
from bench.runner.client import Worker

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

QUICK = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=2, min_s=0.0, max_iters=3)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(("arch", "impl"), [("resnet18", "timm"), ("vit_tiny_patch16_224", "rv")])
def test_backend_rows_are_within_parity_of_eager_fp32(arch: str, impl: str, backend: str, batch: int) -> None:
    """One export per (arch, impl) serves both backends and batches (the later rows say "cached")."""
    row = measure_cell(Cell(arch, impl, batch, 64, backend=backend), QUICK)
    deploy = {name: row[name] for name in columns.names("deploy")}
    assert deploy["parity_ok"] is True and deploy["parity_cos"] > 0.9999 and deploy["parity_top1"] == 1.0
    assert deploy["parity_max_abs"] < 1e-3 and deploy["parity_max_rel"] < 1e-3
    assert deploy["backend_threads"] == torch.get_num_threads()  # the eager cell's threads, in this process
    assert deploy["backend_hint"] == (None if backend == "onnxruntime" else "LATENCY" if batch == 1 else "THROUGHPUT")
    assert deploy["export_s"] > 0 and deploy["model_mb"] > 1
    assert re.fullmatch(r"dynamo opset 18, \d+ warnings(, cached)?", deploy["export_note"])
    assert row["step_ms_p50"] > 0 and row["n_iters"] >= 2
    eager = measure_cell(Cell(arch, impl, batch, 64), QUICK) if (backend, batch) == ("onnxruntime", 1) else None
    if eager is not None:
        assert all(eager[name] is None for name in columns.names("deploy"))


class _OffDuringExport(nn.Module):
    """The model, whose logits gain 1.0 only while `torch.onnx.export` traces it (`is_in_onnx_export`): the
    exported graph computes something else than the eager model, as a broken export would."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits + 1.0 if torch.onnx.is_in_onnx_export() else logits


def test_a_broken_export_fails_parity_and_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported graph adds 1.0 to every logit (`_OffDuringExport`): the argmax survives the shift, the cosine
    similarity does not, so the worker's reply (the row's status and message) is ok, flagged parity_fail."""
    export = backends.export_onnx
    monkeypatch.setattr(backends, "_EXPORTS", {})  # this export must not serve (or come from) another test
    monkeypatch.setattr(backends, "export_onnx", lambda cell, model: export(cell, _OffDuringExport(model)))
    reply = worker.measure(Cell("resnet18", "timm", 2, 64, backend="onnxruntime"), dataclasses.asdict(QUICK))
    row = reply["result"]
    assert row["parity_ok"] is False and row["parity_cos"] < PARITY["fp32"].min_cos and row["parity_top1"] == 1.0
    assert row["parity_max_abs"] == pytest.approx(1.0, abs=1e-3)
    assert reply["status"] == "ok" and reply["message"].startswith("parity_fail: ") and "\n" not in reply["message"]
    assert row["step_ms_p50"] > 0  # timed all the same, and flagged


def test_parity_measures() -> None:
    want = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    same = backends.parity(want, want, "fp32")
    assert same["parity_ok"] and same["parity_max_abs"] == 0 and same["parity_cos"] == pytest.approx(1.0)
    flipped = backends.parity(want[::-1], want, "fp32")
    assert flipped["parity_top1"] == 0.0 and not flipped["parity_ok"]
    assert flipped["parity_max_rel"] == pytest.approx(2 / 3)
    assert backends.parity_message(same, "fp32") == ""


def test_eager_cells_keep_their_ids_and_labels_name_other_backends() -> None:
    """The ids of eager cells are those from before the backend field (pinned here), so old runs resume."""
    assert Cell("resnet18", "rv", 2, 64).cell_id == "09b542c89731"
    assert Cell("vit_tiny_patch16_224", "timm", 1, 32, compile="default").cell_id == "ce365eac9d93"
    deployed = Cell("resnet18", "rv", 2, 64, precision="bf16", backend="openvino")
    assert deployed.cell_id != Cell("resnet18", "rv", 2, 64, precision="bf16").cell_id
    assert "bf16 +openvino" in deployed.label() and "eager" not in Cell("resnet18", "rv", 2, 64).label()
    assert config_label({"arch": "resnet18", "backend": "onnxruntime"}) == "resnet18 · onnxruntime"


def test_a_sweep_crosses_backends_with_inference_without_compile_and_skips_what_they_do_not_compute_in() -> None:
    spec = build_spec("smoke", "cpu", {"models": ["resnet18"], "impls": ["rv"], "batch_sizes": [1],
                                       "backends": ["eager", "onnxruntime"], "precisions": ["fp32", "bf16"],
                                       "modes": ["inference", "train"], "channels_last": True})
    cells = expand(spec)
    deployed = [c for c in cells if c.backend == "onnxruntime"]
    assert [(c.precision, c.mode, c.compile, c.channels_last) for c in deployed] == [("fp32", "inference", "none",
                                                                                       False)]
    assert {(c.precision, c.mode) for c in cells if c.backend == "eager"} == {
        (p, m) for p in ("fp32", "bf16") for m in ("inference", "train")}
    assert spec.skipped_backends == [["onnxruntime", "bf16", "backend onnxruntime runs fp32, not bf16"]]


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))


@pytest.mark.parametrize(("args", "message"), [
    (["--backends", "onnx"], "unknown backend 'onnx'; valid: eager, onnxruntime, openvino, tensorrt"),
    (["--backends", "onnxruntime", "--modes", "train"], "backend onnxruntime runs inference only"),
    (["--backends", "openvino", "--compile", "default"], "compile modes apply to the eager backend only"),
    (["--backends", "tensorrt"], "backend tensorrt needs CUDA, not cpu"),
    (["--backends", "onnxruntime", "--precisions", "bf16"], "backend onnxruntime runs fp32, not bf16"),
    (["--backends", "onnxruntime", "hide"], "needs onnxruntime, not installed: pip install 'rvbench[deploy]'"),
])
def test_bad_backend_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                 message: str) -> None:
    if "hide" in args:
        args = args[:-1]
        _hide(monkeypatch, "onnxruntime")
    out = tmp_path / "reports"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvbench run: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_run_records_backend_rows_and_the_timm_csv_keeps_eager_ones(tmp_path: Path, capsys) -> None:
    """A real `rvbench run` (its worker process, its rows): resnet18 from timm, eager and onnxruntime; its report's
    Backends section and its summary name what ran and the fastest that passed parity."""
    code = main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path), "--models", "resnet18",
                 "--impls", "timm", "--batch-sizes", "2", "--image-size", "64", "--backends", "eager,onnxruntime"])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"fastest with output parity: resnet18 bs2 64px: fp32( \+onnxruntime)? \(timm\) [\d,.]+ img/s",
                     printed)
    run_dir = next((tmp_path / "runs").iterdir())
    rows = {r["backend"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert set(rows) == {"eager", "onnxruntime"} and {r["status"] for r in rows.values()} == {"ok"}
    assert rows["onnxruntime"]["parity_ok"] is True and rows["onnxruntime"]["message"] == ""
    assert rows["eager"]["parity_ok"] is None and rows["eager"]["export_s"] is None
    page = (run_dir / "index.html").read_text()
    section = page.split('<section id="backends">', 1)[1].split("</section>", 1)[0]
    assert "fp32 +onnxruntime" in section and ">pass<" in section and "dynamo opset 18" in section
    assert printed.count("fastest with output parity") == 1 and "fastest with output parity" in (
        run_dir / "summary.txt").read_text()
    with open(run_dir / "results_timm.csv", newline="") as fh:
        timm_rows = list(csv.DictReader(fh))
    assert len(timm_rows) == 1 and timm_rows[0]["model"] == "resnet18"


def test_readme_documents_the_backend_and_every_deploy_column() -> None:
    section = (ROOT / "README.md").read_text().split("### What the numbers mean", 1)[1].split("\n### ", 1)[0]
    assert all(f"`{name}`" in section for name in ("backend", *columns.names("deploy")))


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def test_openvino_runs_one_stream_on_every_thread_above_batch_1(tmp_path: Path) -> None:
    """THROUGHPUT (batch > 1) alone would split the threads into streams; NUM_STREAMS is pinned to 1."""
    exported = backends._export(_tiny(), 16, tmp_path / "model.onnx")
    session = backends._openvino(exported.model, torch.randn(2, 3, 16, 16), torch.get_num_threads(), "fp32")
    assert session.hint == "THROUGHPUT" and int(session.handle.get_property("NUM_STREAMS")) == 1
    assert int(session.handle.get_property("INFERENCE_NUM_THREADS")) == torch.get_num_threads() == session.threads


def test_a_measured_backend_cell_leaves_no_export_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export lives in memory (`_EXPORTS`), its file only while it is read; the cached second cell too."""
    monkeypatch.setattr(backends, "_EXPORTS", {})
    pattern = f"{backends.EXPORT_PREFIX}{os.getpid()}-*"
    for backend in ("onnxruntime", "openvino"):
        row = measure_cell(Cell("resnet18", "rv", 1, 32, backend=backend), QUICK)
        assert row["parity_ok"] is True and len(backends._EXPORTS) == 1
        assert not list(Path(tempfile.gettempdir()).glob(pattern))


def test_the_runner_removes_a_killed_workers_export_directory(tmp_path: Path) -> None:
    """A worker killed (SIGKILL) mid-export cannot remove its directory; Worker.stop removes it by the pid."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, start_new_session=True, text=True)
    leftover = tmp_path / f"{backends.EXPORT_PREFIX}{proc.pid}-abc"
    other = tmp_path / f"{backends.EXPORT_PREFIX}{proc.pid + 1}-abc"  # another worker's: kept
    for folder in (leftover, other):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    stopped = Worker(tmp_path / "log", {"TMPDIR": str(tmp_path)})
    stopped._proc = proc
    stopped.stop()
    assert proc.returncode == -signal.SIGKILL and not leftover.exists() and other.exists()
    assert client.EXPORT_PREFIX == backends.EXPORT_PREFIX


def test_parity_ignores_nearly_tied_images_and_refuses_a_broken_reference() -> None:
    want = np.array([[1.0, 2.0, 3.0], [3.0, 3.0 + 1e-5, 1.0]])  # the second image's top-2 are tied (1e-5 < 3e-4)
    got = np.array([[1.0, 2.0, 3.0], [3.0 + 1e-5, 3.0, 1.0]])  # its argmax flips
    assert backends.parity(got, want, "fp32")["parity_top1"] == 1.0 and backends.parity(got, want, "fp32")["parity_ok"]
    clear = np.array([[1.0, 2.0, 3.0], [3.0, 3.1, 1.0]])
    assert backends.parity(clear[:, [0, 2, 1]], clear, "fp32")["parity_top1"] == 0.0
    with pytest.raises(ValueError, match="eager fp32 reference logits are not finite"):
        backends.parity(want, np.array([[np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]]), "fp32")


def test_openvino_bf16_without_bf16_is_refused_before_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "openvino_bf16_problem", lambda precision: "no BF16 here")
    monkeypatch.setattr(backends, "export_onnx", lambda cell, model: pytest.fail("exported"))
    with pytest.raises(UsageError, match="no BF16 here"):
        backends.deployed_step(Cell("resnet18", "rv", 1, 32, precision="bf16", backend="openvino"), _tiny(),
                               torch.randn(1, 3, 32, 32))


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="this onnxruntime has CUDA")
def test_onnxruntime_on_cuda_needs_onnxruntime_gpu() -> None:
    reason = problem("onnxruntime", mode="inference", compile_mode="none", channels_last=False, precision="fp32",
                     device="cuda")
    assert "CUDAExecutionProvider" in reason and "pip install onnxruntime-gpu" in reason
