"""One spec per model family: everything the harness and the helpers of rv_models know about a family.

A family (ResNet, ViT) is a set of archs sharing one rv model class. Its `Family` spec, defined at the bottom of the
family's own module (as torchvision keeps weights metadata next to each model), holds the archs and their configs,
the names torchvision gives them, how each library lays the network out, the usual training optimizer, the
image-size rule and the closed-form MAC count. Code that needs family knowledge reads it from the spec, so adding a
family means one new rv_models module and its entry in `rv_models.registry.FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import torch
from torch import nn

LIBRARIES = ("rv", "torchvision", "timm")  # rv first: it is the hub every conversion goes through

BLOCKS = "blocks"  # layout group whose container expands into one canonical group per block: blocks.0, blocks.1, ...


@dataclass(frozen=True)
class Layout:
    """How one library lays out a family: its modules and parameters mapped onto canonical groups.

    Canonical groups have the same names in every library (ResNet: stem, layer1..layer4, head; ViT: patch_embed,
    blocks.0..blocks.N-1, head), so FLOP breakdowns, profiles and staged unfreezing compare across libraries.
    """

    # Child module path or direct parameter path -> canonical group, input to output. Paths a model lacks (a module
    # only some library versions create) are skipped; the path mapped to BLOCKS is the container of the blocks.
    groups: Mapping[str, str]
    head: str  # path of the classifier nn.Linear
    body: str  # path of a container that, with `head`, tells this layout apart from the other families'

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))

    def matches(self, model: nn.Module) -> bool:
        """Whether the model has this layout's classifier and body, i.e. is laid out this way."""
        return _find(model, self.head) is not None and _find(model, self.body) is not None

    def parts(self, model: nn.Module) -> list[tuple[str, nn.Module | nn.Parameter]]:
        """(canonical group, module or parameter) for every layout path the model has, input to output.

        The blocks container is expanded: each of its children is its own group blocks.i.
        """
        parts: list[tuple[str, nn.Module | nn.Parameter]] = []
        for path, group in self.groups.items():
            found = _find(model, path)
            if found is None:
                continue
            if group == BLOCKS:
                parts += [(f"{BLOCKS}.{i}", block) for i, block in enumerate(found.children())]
            else:
                parts.append((group, found))
        return parts


def _find(model: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    """The submodule or parameter at a dotted path, or None when the model has neither there."""
    for get in (model.get_submodule, model.get_parameter):
        try:
            return get(path)
        except AttributeError:
            pass
    return None


@dataclass(frozen=True)
class Family:
    """Everything known about one model family, for every arch of it and every library implementing it."""

    name: str  # "resnet", "vit": the family's name in configs, results and sweep specs
    title: str  # "ResNet", "ViT": the family's name in messages
    configs: Mapping[str, Any]  # rv arch name -> its rv architecture config, small to large
    create: Callable[..., nn.Module]  # (arch, **options) -> randomly initialised rv model
    layouts: Mapping[str, Layout]  # library -> its layout; rv and timm share arch names
    torchvision: Mapping[str, tuple[str, str]]  # arch -> (builder name, weights enum name); only archs it has
    torchvision_renames: tuple[tuple[str, str], ...]  # (rv key regex, torchvision key), first match wins
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]  # the family's usual training optimizer
    input_multiple: Callable[[Any], int]  # config -> the input side must be a multiple of this (a ViT's patch)
    takes_image_size: bool  # whether builders size the model for its input (a ViT's position embedding)
    macs: Callable[[Any, int, int], dict[str, int]]  # (config, image side, classes) -> MACs per image by group

    def __post_init__(self) -> None:
        if set(self.layouts) != set(LIBRARIES) or not self.torchvision.keys() <= self.configs.keys():
            raise ValueError(f"family {self.name}: needs a layout per library and torchvision names of its archs")

    def archs(self, library: str = "rv") -> list[str]:
        """The family's rv arch names that `library` implements, small to large."""
        return list(self.torchvision if library == "torchvision" else self.configs)

    def library_name(self, arch: str, library: str) -> str:
        """The name `library` builds `arch` by: torchvision's own, the rv name for rv and timm."""
        return self.torchvision[arch][0] if library == "torchvision" else arch

    def input_multiple_of(self, arch: str) -> int:
        """The input side of `arch` must be a multiple of this (its patch size for a ViT, 1 for a ResNet)."""
        return self.input_multiple(self.configs[arch])

    def analytic_macs(self, arch: str, image_size: int, num_classes: int = 1000) -> dict[str, int]:
        """Closed-form MACs per image of `arch` on a square input, by canonical group, input to output."""
        return self.macs(self.configs[arch], image_size, num_classes)
