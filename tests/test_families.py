"""Conformance of every registered family, from its `Family` spec alone: a new family passes these or is not done.

For one arch per family (the smallest every library has), against each library: state dicts convert both ways and
the converted rv model computes what the library's does, in eval and in train mode (the builder options leave no
stochastic depth on); the smallest input the spec allows runs and one below it is refused with a UsageError; a train
step counts about 3x the forward's FLOPs; the transfer groups are the same in every library.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.cli import main
from bench.config.cell import Cell, validate
from bench.counting.flops import forward_flops, train_flops
from bench.errors import UsageError
from bench.models import get_entry
from rv_models import convert_state_dict
from rv_models.family import LIBRARIES, Family
from rv_models.registry import FAMILIES, family_of
from rv_models.transfer import param_groups

SIZE = 64  # small enough for a quick CPU forward of every family, a whole number of patches for every ViT


def _arch(family: Family) -> str:
    """The family's smallest arch that every library implements."""
    return next(arch for arch in family.archs() if all(arch in family.archs(lib) for lib in LIBRARIES))


FAMILY_LIBRARY = [(family, lib) for family in FAMILIES for lib in LIBRARIES[1:]]
ids = [f"{family.name}-{lib}" for family, lib in FAMILY_LIBRARY]


@functools.cache
def _models(arch: str, lib: str) -> tuple[nn.Module, nn.Module]:
    """(the library's model, rv's model holding its weights converted to rv naming), built once per module.

    The library model has its own random init, each float tensor then moved by noise: zero-initialised biases and
    near-zero layer scales (a ConvNeXt's 1e-6) would otherwise hide a wrongly mapped tensor.
    """
    family = family_of(arch)
    torch.manual_seed(0)
    theirs = family.build(arch, lib, image_size=SIZE)
    with torch.no_grad():
        for name, t in theirs.state_dict().items():
            if t.is_floating_point() and not name.endswith("running_var"):
                t.add_(torch.randn_like(t) * 0.02)
    ours = family.build(arch, "rv", image_size=SIZE)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), lib, "rv", arch))
    return theirs, ours


@pytest.mark.parametrize(("family", "lib"), FAMILY_LIBRARY, ids=ids)
def test_conversion_both_ways_computes_the_library_model(family: Family, lib: str) -> None:
    arch = _arch(family)
    theirs, ours = (model.eval() for model in _models(arch, lib))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
        back = convert_state_dict(ours.state_dict(), "rv", lib, arch)
        assert back.keys() == theirs.state_dict().keys()
        with torch.device("meta"):
            fresh = family.build(arch, lib, image_size=SIZE)
        fresh.load_state_dict(back, assign=True)  # strict: every key and shape (torchvision's (C, 1, 1) scales)
        torch.testing.assert_close(fresh.eval()(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "lib"), FAMILY_LIBRARY, ids=ids)
def test_train_mode_step_is_the_same_computation(family: Family, lib: str) -> None:
    """Same weights, input and seed give the same train-mode output and loss: no library-only stochastic depth or
    dropout is left on by its builder's defaults (the spec's `options` turn them off)."""
    theirs, ours = (model.train() for model in _models(_arch(family), lib))
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    outputs = []
    for model in (ours, theirs):
        torch.manual_seed(1)
        outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(F.cross_entropy(outputs[0], y), F.cross_entropy(outputs[1], y), rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_smallest_input_runs_and_a_smaller_one_is_refused(family: Family) -> None:
    arch = _arch(family)
    smallest = family.min_image_size_of(arch)
    for lib in LIBRARIES:
        with torch.device("meta"):  # then storage without values: the shapes are what is checked, fast
            model = get_entry(arch, lib).build(num_classes=10, image_size=smallest)
        model.to_empty(device="cpu").train()
        assert model(torch.randn(2, 3, smallest, smallest)).shape == (2, 10)
        message = f"{arch} needs an image size >= {smallest} px, got {smallest - 1}"
        with pytest.raises(UsageError, match=message):
            validate(Cell(arch, lib, 2, smallest - 1))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_cli_refuses_a_too_small_input_with_one_line_exit_2(family: Family, capsys) -> None:
    arch = _arch(family)
    smallest = family.min_image_size_of(arch)
    assert main(["flops", "--models", arch, "--image-size", str(smallest - 1)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{arch} needs an image size >= {smallest} px, got {smallest - 1}")


@pytest.mark.parametrize(("family", "lib"), [(f, lib) for f in FAMILIES for lib in LIBRARIES],
                         ids=[f"{f.name}-{lib}" for f in FAMILIES for lib in LIBRARIES])
def test_train_step_counts_about_three_forwards(family: Family, lib: str) -> None:
    forward = forward_flops(_arch(family), lib, SIZE)
    assert 2.5 * forward <= train_flops(_arch(family), lib, SIZE) <= 3.5 * forward


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_transfer_groups_are_the_same_in_every_library(family: Family) -> None:
    def groups(lib: str) -> list[tuple[str, int]]:
        with torch.device("meta"):
            model = family.build(_arch(family), lib, image_size=SIZE)
        return [(g.name, sum(p.numel() for p in g.params)) for g in param_groups(model)]

    rv = groups("rv")
    assert len(rv) >= 3 and all(size > 0 for _, size in rv)
    for lib in LIBRARIES[1:]:
        assert groups(lib) == rv, lib
