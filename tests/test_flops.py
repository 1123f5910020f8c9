"""FLOP and parameter counting: the counters agree, match torchvision, and fvcore's gap is explained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision.models

from bench.counting import fvcore_count as fvc
from bench.cli import main
from bench.counting.flops import (
    analytic_macs, count, count_params, flop_counter, forward_flops, module_flops, train_flops, tv_published,
)
from bench.models import get_entry, list_entries
from rv_models.vit import CONFIGS as VITS, vit_attention_macs, vit_projection_macs

ENTRIES = list_entries()
ids = lambda e: f"{e.arch}-{e.impl}"  # noqa: E731


@pytest.fixture(autouse=True)
def _private_fvcore_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_flopcounter_equals_analytic_exactly(entry) -> None:
    macs = sum(analytic_macs(entry.arch, 224).values())
    assert forward_flops(entry.arch, entry.impl, 224) == 2 * macs


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_module_breakdown_matches_analytic_groups_and_sums_to_total(entry) -> None:
    with torch.device("meta"):
        model = entry.build()
    groups = module_flops(model, entry.arch, entry.impl, 224)
    assert groups == {name: 2 * macs for name, macs in analytic_macs(entry.arch, 224).items()}
    assert sum(groups.values()) == forward_flops(entry.arch, entry.impl, 224)


def test_module_breakdown_of_a_real_model_is_counted_without_compute() -> None:
    model = get_entry("resnet18", "rv").build()
    groups = module_flops(model, "resnet18", "rv", 64)
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(groups.values()) == 2 * sum(analytic_macs("resnet18", 64).values())


TV_WEIGHTS = [
    (entry, weights)
    for entry in list_entries(impls=["torchvision"])
    for weights in getattr(torchvision.models, entry.tv_weights)
]


@pytest.mark.parametrize("entry, weights", TV_WEIGHTS, ids=lambda x: getattr(x, "name", None) or x.arch)
def test_counters_reproduce_torchvision_published_gmacs(entry, weights) -> None:
    """torchvision's `_ops` are GMACs at 3 decimals, each at its weights' own eval size (518 px for H/14 SWAG E2E)."""
    size = weights.transforms().crop_size[0]
    published = weights.meta["_ops"]
    assert round(sum(analytic_macs(entry.arch, size).values()) / 1e9, 3) == published
    assert round(forward_flops(entry.arch, "torchvision", size) / 2e9, 3) == published
    assert tv_published(entry.arch, size)[1] == published


def test_published_figure_is_absent_where_torchvision_has_none() -> None:
    assert tv_published("vit_tiny_patch16_224", 224) is None
    assert tv_published("resnet50", 192) is None
    assert tv_published("vit_huge_patch14_224", 518) == ("ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1", 1016.717)


@pytest.mark.parametrize(
    "arch, impl", [("resnet18", "timm"), ("vit_tiny_patch16_224", "rv"), ("vit_base_patch32_224", "torchvision")]
)
def test_train_flops_are_forward_plus_about_twice_forward(arch: str, impl: str) -> None:
    forward = forward_flops(arch, impl, 224)
    assert 2 * forward < train_flops(arch, impl, 224) <= 3 * forward


def test_count_params_sees_frozen_parameters() -> None:
    with torch.device("meta"):
        model = get_entry("resnet18", "torchvision").build()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.requires_grad_(True)
    assert count_params(model) == (11_689_512, 512_000)


def _fvcore_parts(arch: str, impl: str, size: int) -> tuple[int, int, dict]:
    fv = fvc.fvcore_count(get_entry(arch, impl), size)
    macs, extra = fvc.fvcore_split(fv)
    return macs, extra, fv


@pytest.mark.parametrize("impl", ["rv", "torchvision", "timm"])
def test_fvcore_on_resnet_adds_norms_and_pool_only(impl: str) -> None:
    macs, extra, fv = _fvcore_parts("resnet18", impl, 64)
    assert macs == sum(analytic_macs("resnet18", 64).values())
    assert extra > 0 and set(fv["by_operator"]) - fvc._MATMUL_OPS == {"batch_norm", "adaptive_avg_pool2d"}
    assert fv["total"] == macs + extra


@pytest.mark.parametrize("impl", ["rv", "timm"])
def test_fvcore_on_vit_misses_exactly_the_sdpa_attention(impl: str) -> None:
    arch, size = "vit_tiny_patch16_224", 64
    cfg = VITS[arch]
    macs, extra, fv = _fvcore_parts(arch, impl, size)
    analytic = sum(analytic_macs(arch, size).values())
    assert analytic - macs == cfg.depth * vit_attention_macs(cfg, size)
    assert fv["unsupported"]["aten::scaled_dot_product_attention"] == cfg.depth
    assert set(fv["by_operator"]) - fvc._MATMUL_OPS == {"layer_norm"} and extra > 0
    note = fvc.fvcore_note(fv, analytic)
    assert "scaled_dot_product_attention x12" in note and "layer_norm" in note


def test_fvcore_on_torchvision_vit_misses_the_multihead_attention_fast_path() -> None:
    arch, size = "vit_base_patch32_224", 64
    cfg = VITS[arch]
    macs, _, fv = _fvcore_parts(arch, "torchvision", size)
    missing = sum(analytic_macs(arch, size).values()) - macs
    assert missing == cfg.depth * (vit_attention_macs(cfg, size) + vit_projection_macs(cfg, size))
    assert fv["unsupported"]["aten::_native_multi_head_attention"] == cfg.depth


def test_fvcore_results_are_cached_on_disk(monkeypatch) -> None:
    entry = get_entry("resnet18", "torchvision")
    first = fvc.fvcore_count(entry, 32)
    monkeypatch.setattr(fvc, "_analyse", lambda *_: pytest.fail("cache not used"))
    assert fvc.fvcore_count(entry, 32) == first


def test_without_fvcore_the_other_counters_still_count_and_say_why(monkeypatch) -> None:
    """A GPU node's own Python may lack fvcore: its column is empty with the reason, not a failed row."""
    monkeypatch.setattr(fvc.importlib.util, "find_spec", lambda name: None if name == "fvcore" else object())
    monkeypatch.setattr(fvc, "_analyse", lambda *_: pytest.fail("fvcore used where it is not installed"))
    row = count(get_entry("resnet18", "rv"), 32)
    assert row["gflops_fvcore"] is None and row["fvcore_note"] == fvc.NOT_INSTALLED
    assert row["gmacs_analytic"] == row["gmacs_flopcounter"] > 0


def test_count_row_has_the_documented_fields() -> None:
    row = count(get_entry("vit_base_patch16_224", "timm"), fvcore=False)
    assert row["gmacs_analytic"] == row["gmacs_flopcounter"] == 17.563828224
    assert row["gflops_flopcounter"] == 2 * row["gmacs_flopcounter"]
    assert row["tv_published_gmacs"] == 17.564
    assert row["params"] == row["params_trainable"] == 86_567_656
    assert list(row["modules"])[:2] == ["patch_embed", "blocks.0"] and len(row["modules"]) == 14
    assert row["gflops_fvcore"] is None


def test_flops_cli_json_for_one_arch(tmp_path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "bench", "flops", "--json", "--models", "resnet18", "--image-size", "64"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    rows = json.loads(done.stdout)
    assert [r["impl"] for r in rows] == ["rv", "torchvision", "timm"]
    for row in rows:
        assert row["image_size"] == 64 and row["tv_published_gmacs"] is None
        assert row["gmacs_analytic"] == row["gmacs_flopcounter"]
        assert row["gflops_fvcore"] > row["gmacs_analytic"] and "batch_norm" in row["fvcore_note"]
        assert row["fvcore_unsupported"] == {"aten::add_": 8, "aten::max_pool2d": 1}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "resnet99"], "unknown arch 'resnet99'; valid: resnet18"),
        (["--impls", "keras"], "unknown impl 'keras'; valid: rv, torchvision, timm"),
        (["--models", "vit_base_patch16_224", "--image-size", "100"], "multiple of its patch size 16"),
    ],
)
def test_flops_cli_refuses_bad_input_with_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(["flops", *argv]) == 2
    assert message in capsys.readouterr().err


def test_train_flops_of_resnet_at_tiny_input() -> None:
    """At 32 px the last feature map is 1x1; counting must not trip batch-norm's batch-1 check."""
    forward = forward_flops("resnet18", "rv", 32)
    train = train_flops("resnet18", "rv", 32)
    assert 2 * forward < train < 4 * forward


@pytest.mark.parametrize("c_in, c_out, groups", [(8, 12, 4), (8, 8, 8)], ids=["grouped", "depthwise"])
def test_grouped_conv_forward_and_each_gradient_count_the_analytic_flops(c_in: int, c_out: int, groups: int) -> None:
    """2 N Cout Hout Wout (Cin / groups) kh kw for the forward, and the same again for grad_input and for grad_weight
    (torch's own formula counts a grouped weight gradient `groups` times over)."""
    conv = torch.nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, groups=groups)
    x = torch.randn(2, c_in, 9, 9, requires_grad=True)
    analytic = 2 * 2 * c_out * 5 * 5 * (c_in // groups) * 3 * 3
    with flop_counter() as counter:
        out = conv(x)
        assert counter.get_total_flops() == analytic
        out.sum().backward()
    assert counter.get_total_flops() == 3 * analytic
    with flop_counter() as counter:
        conv(x.detach()).sum().backward()  # no input gradient: the weight gradient alone
    assert counter.get_total_flops() == 2 * analytic


def test_the_reports_flop_table_takes_the_workers_counts_from_the_rows(monkeypatch):
    """A pair whose rows carry params_total and gflops_per_image is not counted again (the report of an
    88-cell run spent 12 s recounting on meta); a pair no row carries them for (every cell failed) is."""
    import pandas as pd

    from bench.report.sections import flops as section

    section._row.cache_clear()
    counted = []
    real_count = section.flops.count
    monkeypatch.setattr(section.flops, "count", lambda entry, image_size: counted.append(entry.arch)
                        or real_count(entry, image_size=image_size, fvcore=False))
    df = pd.DataFrame({"arch": ["resnet18", "resnet18", "vit_tiny_patch16_224"], "impl": ["rv", "rv", "rv"],
                       "image_size": [32, 32, 32], "params_total": [11_689_512, 11_689_512, None],
                       "gflops_per_image": [0.15, 0.15, None]})
    table, _ = section.flops_table(df)
    by_arch = {row[0]: row for row in table.rows}
    assert counted == ["vit_tiny_patch16_224"]
    assert by_arch["resnet18"][3] == "11.69" and by_arch["resnet18"][5] == "0.075"  # GMACs = GFLOPs / 2
    section._row.cache_clear()
