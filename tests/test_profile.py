"""Profiling on CPU: trace, category breakdown, per-module FLOPs join, roofline, CLI."""

from __future__ import annotations

import functools
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.config.cell import Cell
from bench.hardware.gpus import match_device, peak_tflops_for
from bench.errors import UsageError
from bench.counting.flops import module_flops
from bench.models import get_entry
from bench.profiling.opcats import CATEGORIES, classify
from bench.profiling.profile import profile_cell
from bench.profiling.roofline import count_bytes, place, point

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("profile")

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def test_count_bytes_charges_inputs_and_outputs_but_not_views() -> None:
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_bytes(lambda: a @ b) == (64 * 32 + 32 * 16 + 64 * 16) * 4
    assert count_bytes(lambda: a.t().view(32, 64)) == 0


def test_place_on_roofline() -> None:
    gpu = "NVIDIA H100 80GB HBM3"
    peak, bw_tbs = peak_tflops_for(gpu, "amp-bf16"), match_device(gpu).mem_bw_gbs / 1000
    ridge = peak / bw_tbs
    memory_bound = place(point(1e12, 1e12 / (ridge / 2), 0.1), gpu, "amp-bf16")  # intensity ridge/2
    assert memory_bound["bound"] == "memory"
    assert memory_bound["ridge_intensity"] == pytest.approx(ridge)
    assert memory_bound["attainable_tflops"] == pytest.approx(peak / 2)
    assert memory_bound["pct_of_attainable"] == pytest.approx(100 * 10 / (peak / 2))
    compute_bound = place(point(1e12, 1e12 / (ridge * 2), 0.01), gpu, "amp-bf16")
    assert compute_bound["bound"] == "compute"
    assert compute_bound["attainable_tflops"] == pytest.approx(peak)
    assert place(point(1e12, 1e9, 0.01), "Some Unknown GPU", "fp32") is None
    assert place(point(1e12, 1e9, 0.01), None, "fp32") is None


def _profile(tmp_path_factory: pytest.TempPathFactory, cell: Cell) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp(cell.arch)
    return profile_cell(cell, out, steps=2), out


@functools.lru_cache(maxsize=None)
def _model(arch: str, impl: str) -> torch.nn.Module:
    return get_entry(arch, impl).build(image_size=SIZE)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    return _profile(tmp_path_factory, Cell("resnet18", "torchvision", 2, SIZE, mode="train"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    return _profile(tmp_path_factory, Cell("vit_tiny_patch16_224", "timm", 2, SIZE))


@pytest.fixture(params=["resnet", "vit"])
def profiled(request: pytest.FixtureRequest) -> tuple[dict, Path]:
    return request.getfixturevalue(request.param)


def test_trace_is_valid_chrome_json(profiled: tuple[dict, Path]) -> None:
    summary, out = profiled
    with gzip.open(out / summary["trace"], "rt") as fh:
        trace = json.load(fh)
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any(name.startswith("aten::") for name in names)
    assert any(name.startswith("module::") for name in names)


def test_profile_json_matches_returned_summary(profiled: tuple[dict, Path]) -> None:
    summary, out = profiled
    assert json.loads((out / "profile.json").read_text()) == json.loads(json.dumps(summary))


def test_category_shares_sum_to_100(profiled: tuple[dict, Path]) -> None:
    summary, _ = profiled
    assert list(summary["categories"]) == list(CATEGORIES)
    assert sum(summary["categories"].values()) == pytest.approx(100.0, abs=1e-6)
    assert sum(summary["category_ms"].values()) == pytest.approx(summary["busy_ms"])
    assert summary["categories_note"] is None


def test_top_ops_ranked_and_classified(profiled: tuple[dict, Path]) -> None:
    top = profiled[0]["top_ops"]
    assert 0 < len(top) <= 20
    assert [op["ms"] for op in top] == sorted((op["ms"] for op in top), reverse=True)
    assert all(op["category"] == classify(op["name"]) for op in top)


def test_module_rows_carry_the_measurement_core_flops(profiled: tuple[dict, Path]) -> None:
    summary, _ = profiled
    model = _model(summary["arch"], summary["impl"])
    expected = module_flops(model, summary["arch"], summary["impl"], SIZE)
    rows = {row["group"]: row for row in summary["modules"]}
    assert {group: row["flops_per_image"] for group, row in rows.items()} == expected
    for group, row in rows.items():
        assert row["gflops"] == pytest.approx(expected[group] * summary["batch_size"] / 1e9)
        assert row["ms"] > 0, group
        assert row["achieved_tflops"] == pytest.approx(row["gflops"] / row["ms"])


def test_module_time_is_part_of_the_operator_time(profiled: tuple[dict, Path]) -> None:
    """Groups neither nest nor overlap in these models, so their sum is the total under any group,
    and that is op time the categories count too (plus the ops outside groups, and backward)."""
    summary, _ = profiled
    assert sum(row["ms"] for row in summary["modules"]) == pytest.approx(summary["modules_ms_total"])
    assert 0 < summary["modules_ms_total"] <= summary["busy_ms"]


def test_cpu_roofline_absent_but_intensity_reported(profiled: tuple[dict, Path]) -> None:
    summary, _ = profiled
    model = _model(summary["arch"], summary["impl"])
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert summary["roofline"] is None and "CPU" in summary["roofline_note"]
    assert summary["bytes_per_step"] > weight_bytes  # every weight is read at least once
    assert summary["intensity"] == pytest.approx(summary["flops_per_step"] / summary["bytes_per_step"])
    assert summary["achieved_tflops"] > 0
    assert summary["memory"]["forward_mb"] is None and summary["memory"]["note"]


def test_resnet_train_time_is_mostly_convolution(resnet: tuple[dict, Path]) -> None:
    summary = resnet[0]
    shares = summary["categories"]
    assert max(shares, key=shares.get) == "convolution"
    assert shares["attention"] == 0
    assert "aten::convolution_backward" in {op["name"] for op in summary["top_ops"]}


def test_vit_spends_time_in_attention_and_matmul(vit: tuple[dict, Path]) -> None:
    shares = vit[0]["categories"]
    assert shares["attention"] > 0 and shares["matmul"] > 0 and shares["convolution"] > 0


def test_bad_arguments_raise_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="steps"):
        profile_cell(Cell("resnet18", "torchvision", 1, SIZE), tmp_path, steps=0)
    with pytest.raises(UsageError, match="CUDA"):
        profile_cell(Cell("resnet18", "torchvision", 1, SIZE), tmp_path, memory_snapshot=True)
    with pytest.raises(UsageError, match="valid"):
        profile_cell(Cell("resnet18", "nope", 1, SIZE), tmp_path)
    assert not (tmp_path / "profile.json").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "profile", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_profile_json(tmp_path: Path) -> None:
    done = _cli("resnet18", "--batch-size", "1", "--image-size", "32", "--device", "cpu", "--steps", "1",
                "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert (summary["arch"], summary["impl"], summary["image_size"]) == ("resnet18", "rv", 32)
    assert "convolution" in done.stdout and str(tmp_path / "profile.json") in done.stdout
    assert done.stderr == "", "nothing from Kineto on a CPU (it printed: gpuGetDeviceCount failed)"


def test_cli_bad_arch_exits_2() -> None:
    done = _cli("resnet9000", "--device", "cpu")
    assert done.returncode == 2
    assert "valid:" in done.stderr and "Traceback" not in done.stderr
