"""Sweep overhead (issue 20): models initialised once, initial weights reused without aliasing, and the
build_s / overhead_s columns and wall/timed ratio that report it."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench.cli import main
from bench.config.cell import Cell
from bench.counting.memory import predict_cell_peak
from bench.execute import prepare
from bench.models import get_entry
from bench.report.summary import convergence, overhead, summary_text
from bench.results import load_run
from rv_models import create_model

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("overhead")

CPU = torch.device("cpu")
SIZE = 32


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(prepare._tensors(model))


@pytest.mark.parametrize("impl", ["rv", "torchvision", "timm"])
def test_initial_weights_are_the_seeded_ones_on_every_build_and_never_shared(impl, monkeypatch):
    monkeypatch.setattr(prepare, "_INITIAL_WEIGHTS", type(prepare._INITIAL_WEIGHTS)())
    entry = get_entry("resnet18", impl)
    torch.manual_seed(prepare.SEED)
    seeded = _tensors(entry.build(image_size=SIZE))
    drawn = prepare.initial_model(entry, SIZE, CPU)  # first build: draws the weights
    copied = prepare.initial_model(entry, SIZE, CPU)  # second build: copies the kept ones
    assert drawn is not copied
    a, b = _tensors(drawn), _tensors(copied)
    assert a.keys() == b.keys() == seeded.keys()
    for name, tensor in seeded.items():
        assert torch.equal(a[name], tensor) and torch.equal(b[name], tensor), name
        assert a[name].data_ptr() != b[name].data_ptr(), f"{name} shares storage between two builds"
    with torch.no_grad():
        next(copied.parameters()).add_(1.0)  # a cell that trains its model leaves the next cell's alone
    again = _tensors(prepare.initial_model(entry, SIZE, CPU))
    assert all(torch.equal(again[name], tensor) for name, tensor in seeded.items())


def test_kept_weights_are_one_arch_worth(monkeypatch):
    monkeypatch.setattr(prepare, "_INITIAL_WEIGHTS", type(prepare._INITIAL_WEIGHTS)())
    for arch in ["resnet18", "resnet34"]:
        for impl in ["rv", "torchvision", "timm"]:
            prepare.initial_model(get_entry(arch, impl), SIZE, CPU)
    assert list(prepare._INITIAL_WEIGHTS) == [("resnet34", impl, SIZE) for impl in ["rv", "torchvision", "timm"]]


def _count_calls(monkeypatch, *names: str) -> dict[str, int]:
    """Calls of these nn.init functions on tensors with storage (on the meta device they draw nothing)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(nn.init, name)

        def counted(tensor, *args, _name=name, _original=original, **kwargs):
            calls[_name] += not tensor.is_meta
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(nn.init, name, counted)
    return calls


def test_rv_vit_initialises_each_weight_once(monkeypatch):
    """kaiming_uniform_ is nn.Linear's and nn.Conv2d's default init: only the patch conv keeps it."""
    calls = _count_calls(monkeypatch, "kaiming_uniform_", "trunc_normal_")
    model = create_model("vit_tiny_patch16_224")
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert calls == {"kaiming_uniform_": 1, "trunc_normal_": linears + 2}  # + pos_embed, cls_token


def test_rv_resnet_initialises_each_weight_once(monkeypatch):
    """Every conv gets kaiming-normal only; the fc alone keeps the default (kaiming-uniform)."""
    calls = _count_calls(monkeypatch, "kaiming_uniform_", "kaiming_normal_")
    model = create_model("resnet18")
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert calls == {"kaiming_uniform_": 1, "kaiming_normal_": convs}


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_rv_init_sets_every_parameter_and_buffer(arch):
    """The layers are allocated uninitialised, so the model's init must leave no tensor unset."""
    model = create_model(arch)
    with torch.no_grad():
        for t in _tensors(model).values():
            t.fill_(math.nan if t.is_floating_point() else -1)
    model._init_weights(*([False] if arch == "resnet18" else []))
    for name, t in _tensors(model).items():
        assert torch.isfinite(t).all() if t.is_floating_point() else (t == 0).all(), name


def test_rv_resnet_weights_have_torchvisions_distribution():
    """Same names, same init scheme: every large tensor's spread matches torchvision's within 5%."""
    rv, tv = _tensors(get_entry("resnet18", "rv").build()), _tensors(get_entry("resnet18", "torchvision").build())
    assert rv.keys() == tv.keys()
    for name, t in rv.items():
        if t.numel() >= 4096:
            assert t.float().std().item() == pytest.approx(tv[name].float().std().item(), rel=0.05), name


def test_user_device_context_is_respected():
    with torch.device("meta"):
        model = create_model("vit_tiny_patch16_224")
    assert {t.device.type for t in _tensors(model).values()} == {"meta"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Two real cells of rv resnet18, 32 px, one round."""
    out = tmp_path_factory.mktemp("reports")
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--rounds", "1", "--models", "resnet18",
                 "--impls", "rv", "--batch-sizes", "1,2", "--image-size", str(SIZE), "--out", str(out)]) == 0
    return next((out / "runs").iterdir())


def test_rows_carry_build_and_overhead(tiny_run):
    df = load_run(tiny_run)
    assert len(df) == 2 and (df["status"] == "ok").all()
    assert (df["build_s"] > 0).all() and (df["build_s"] < df["wall_s"]).all()
    assert (df["overhead_s"] >= df["build_s"]).all()  # the build is part of the overhead
    assert (df["overhead_s"] - (df["wall_s"] - df["timed_s"])).abs().max() < 2e-3  # rounded to ms
    # Every row carries the runner's memory prediction (issue 13), the exact value of the cell's config.
    expected = [predict_cell_peak(Cell("resnet18", "rv", b, SIZE)) / 2**20 for b in (1, 2)]
    assert sorted(df["mem_predicted_mb"]) == pytest.approx(expected)


def test_report_header_and_summary_show_the_wall_timed_ratio(tiny_run):
    df = load_run(tiny_run)
    ratio = f"{df['wall_s'].sum() / df['timed_s'].sum():.2f}"
    assert overhead(df) == f"{ratio} ({df['wall_s'].sum():.1f} s wall / {df['timed_s'].sum():.1f} s timed)"
    assert summary_text(df).startswith(f"cells: 2 ok · wall/timed {ratio} (")
    html = (tiny_run / "index.html").read_text()
    assert f"<dt>Wall / timed</dt><dd>{ratio} (" in html
    # The smoke preset's 3-step loops are too short for a 95% interval: no cell converged, and both views say so.
    assert summary_text(df).splitlines()[0].endswith("· 0 of 2 ok cells converged (0%)")
    assert "<dt>Converged</dt><dd>0 of 2 ok cells converged (0%)</dd>" in html


def test_summary_and_header_say_how_many_cells_converged():
    """Four ok cells, three of them converged; a run without verdicts (the fixed rule) says nothing."""
    df = pd.DataFrame({"status": ["ok"] * 4 + ["error"], "find_max_batch": False, "wall_s": 1.0, "timed_s": 0.5,
                       "converged": [True, True, False, True, None], "rel_ci": [0.01, 0.02, 0.05, 0.03, None]})
    assert convergence(df) == "3 of 4 ok cells converged (75%) · median ±2.5%"
    assert convergence(df.assign(converged=None)) == "" and convergence(df.drop(columns="converged")) == ""


def test_ratio_counts_only_cells_that_finished_timing():
    df = pd.DataFrame({"status": ["ok", "error"], "wall_s": [3.0, 100.0], "timed_s": [2.0, None]})
    assert overhead(df) == "1.50 (3.0 s wall / 2.0 s timed)"
    assert overhead(df.iloc[1:]).startswith("–")
