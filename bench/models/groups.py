"""Canonical module groups: the same names for every implementation of an arch.

rv, torchvision and timm name their submodules differently (torchvision's ViT has conv_proj and
encoder.layers, timm's has patch_embed and blocks). The per-module FLOP breakdown and the
profiler's per-module times need one vocabulary to compare implementations, so each library's
layout, from the family's spec (rv_models.family.Layout), maps its modules onto:
  ResNet: stem, layer1, layer2, layer3, layer4, head
  ConvNeXt: stem, stage1 .. stage4 (each with its downsampling layer), head
  ViT:    patch_embed (patch conv, class token, position embedding), blocks.0 .. blocks.N-1,
          head (final norm and classifier)
A submodule the layout does not know is an error, so nothing can silently fall outside a group.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from bench.models.registry import family_spec


def _child_paths(model: nn.Module, containers: Collection[str]) -> list[str]:
    paths = []
    for name, child in model.named_children():
        if name in containers:
            paths += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            paths.append(name)
    return paths


def module_groups(model: nn.Module, family: str, impl: str) -> dict[str, list[nn.Module]]:
    """Canonical group name -> the model's modules in that group, in forward order.

    Groups are lists because one canonical group can span several library modules (the ViT head
    is the final norm plus the classifier). Parameters that are not modules (class token,
    position embedding) are left out: they cost no FLOPs. Raises RuntimeError if the model has a
    submodule the layout does not place, which means an implementation changed its layout.
    """
    layout = family_spec(family).layouts[impl]
    # Containers whose children the layout lists individually (torchvision's ViT encoder).
    containers = {path.split(".")[0] for path in layout.groups if "." in path}
    unplaced = [p for p in _child_paths(model, containers) if p not in layout.groups]
    if unplaced:
        raise RuntimeError(f"{impl} {family} has modules outside the canonical groups: {', '.join(unplaced)}")
    groups: dict[str, list[nn.Module]] = {}
    for group, part in layout.parts(model):
        if isinstance(part, nn.Module):
            groups.setdefault(group, []).append(part)
    return groups
