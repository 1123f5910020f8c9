"""The model registry: which pairs exist, that each builds, and that bad names are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.models

from bench.cli import main
from bench.errors import UsageError
from bench.counting.flops import count_params
from bench.models import get_entry, list_archs, list_entries
from rv_models.registry import FAMILIES

ENTRIES = list_entries()


def test_registry_has_every_arch_and_only_real_pairs() -> None:
    archs = [arch for family in FAMILIES for arch in family.archs()]
    assert list_archs() == archs and len(set(archs)) == len(archs)
    for family in FAMILIES:
        for arch in family.archs():
            impls = {e.impl for e in list_entries(archs=[arch])}
            assert impls == {"rv", "timm"} | ({"torchvision"} if arch in family.torchvision else set()), arch
    assert len(ENTRIES) == sum(2 * len(f.archs()) + len(f.archs("torchvision")) for f in FAMILIES)


def test_torchvision_names_are_mapped() -> None:
    assert get_entry("vit_base_patch16_224", "torchvision").lib_name == "vit_b_16"
    assert get_entry("vit_huge_patch14_224", "torchvision").tv_weights == "ViT_H_14_Weights"
    assert get_entry("resnet50", "timm").lib_name == "resnet50"
    assert all(e.image_size == 224 for e in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.arch}-{e.impl}")
def test_every_entry_builds_with_the_requested_head(entry) -> None:
    with torch.device("meta"):
        model = entry.build(num_classes=10).eval()
        out = model(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("arch", list_archs())
def test_impls_of_an_arch_have_identical_parameter_counts(arch: str) -> None:
    counts = set()
    for entry in list_entries(archs=[arch]):
        with torch.device("meta"):
            counts.add(count_params(entry.build()))
    assert len(counts) == 1, counts


def test_torchvision_parameter_counts_match_its_weights_metadata() -> None:
    for entry in list_entries(impls=["torchvision"]):
        for weights in getattr(torchvision.models, entry.tv_weights):
            size = weights.transforms().crop_size[0]
            with torch.device("meta"):
                total, _ = count_params(entry.build(image_size=size))
            assert total == weights.meta["num_params"], (entry.arch, weights.name)


def test_unknown_names_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(UsageError, match="valid: resnet18, resnet34"):
        list_entries(archs=["resnet99"])
    with pytest.raises(UsageError, match="valid: rv, torchvision, timm"):
        list_entries(impls=["keras"])
    with pytest.raises(UsageError, match="impls with vit_tiny_patch16_224: rv, timm"):
        get_entry("vit_tiny_patch16_224", "torchvision")


def test_vit_image_size_must_be_whole_patches() -> None:
    with pytest.raises(UsageError, match="multiple of its patch size 32"):
        get_entry("vit_base_patch32_224", "timm").build(image_size=100)


def test_models_command_lists_every_entry_as_json(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(ENTRIES)
    assert {"arch", "impl", "family", "lib_name", "image_size", "tv_weights"} <= set(rows[0])
    assert main(["models"]) == 0
    assert "vit_b_16" in capsys.readouterr().out
