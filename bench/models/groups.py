"""Canonical module groups: the same names for every implementation of an arch.

rv, torchvision and timm name their submodules differently (torchvision's ViT has conv_proj and
encoder.layers, timm's has patch_embed and blocks). The per-module FLOP breakdown and the
profiler's per-module times need one vocabulary to compare implementations, so each layout is
mapped here onto:
  ResNet: stem, layer1, layer2, layer3, layer4, head
  ViT:    patch_embed (patch conv, class token, position embedding), blocks.0 .. blocks.N-1,
          head (final norm and classifier)
A submodule the mapping does not know is an error, so nothing can silently fall outside a group.
"""

from __future__ import annotations

from torch import nn

from bench.errors import UsageError

# Child module path -> canonical group; "blocks" expands to one group per block, in order.
# Parameters that are not modules (class token, position embedding) need no entry: they cost no FLOPs.
_RESNET = {
    "conv1": "stem",
    "bn1": "stem",
    "relu": "stem",  # rv, torchvision
    "act1": "stem",  # timm
    "maxpool": "stem",
    "layer1": "layer1",
    "layer2": "layer2",
    "layer3": "layer3",
    "layer4": "layer4",
    "avgpool": "head",  # rv, torchvision
    "global_pool": "head",  # timm
    "fc": "head",
}
_VIT_TIMM = {  # rv uses timm's module names
    "patch_embed": "patch_embed",
    "pos_drop": "patch_embed",
    "patch_drop": "patch_embed",
    "norm_pre": "patch_embed",
    "blocks": "blocks",
    "norm": "head",
    "fc_norm": "head",
    "head_drop": "head",
    "head": "head",
}
_VIT_TORCHVISION = {
    "conv_proj": "patch_embed",
    "encoder.dropout": "patch_embed",
    "encoder.layers": "blocks",
    "encoder.ln": "head",
    "heads": "head",
}
# Containers whose children the torchvision ViT mapping lists individually.
_TORCHVISION_CONTAINERS = {"encoder"}


def _layout(family: str, impl: str) -> dict[str, str]:
    if family == "resnet":
        return _RESNET
    if family == "vit":
        return _VIT_TORCHVISION if impl == "torchvision" else _VIT_TIMM
    raise UsageError(f"unknown model family {family!r}; valid: resnet, vit")


def _child_paths(model: nn.Module, containers: set[str]) -> list[str]:
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
    is the final norm plus the classifier). Raises RuntimeError if the model has a submodule the
    mapping does not place, which means an implementation changed its layout.
    """
    layout = _layout(family, impl)
    containers = _TORCHVISION_CONTAINERS if family == "vit" and impl == "torchvision" else set()
    unplaced = [p for p in _child_paths(model, containers) if p not in layout]
    if unplaced:
        raise RuntimeError(f"{impl} {family} has modules outside the canonical groups: {', '.join(unplaced)}")
    groups: dict[str, list[nn.Module]] = {}
    for path, group in layout.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue  # optional module this library version does not create
        if group == "blocks":
            for i, block in enumerate(module.children()):
                groups[f"blocks.{i}"] = [block]
        else:
            groups.setdefault(group, []).append(module)
    return groups
