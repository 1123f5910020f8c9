"""One spec per model family: everything the harness and the helpers of rv_models know about a family.

A family (ResNet, ViT, ConvNeXt) is a set of archs sharing one rv model class. Its `Family` spec, defined at the
bottom of the family's own module (as torchvision keeps weights metadata next to each model), holds the archs and
their configs, the names torchvision gives them, how each library names and shapes the weights, the builder options
that make each library's model compute what rv's does, how each library lays the network out, the usual training
optimizer, the image-size rules and the closed-form MAC count. Code that needs family knowledge reads it from the
spec, so adding a family means one new rv_models module and its entry in `rv_models.registry.FAMILIES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    blocks.0..blocks.N-1, head; ConvNeXt: stem, stage1..stage4, head), so FLOP breakdowns, profiles and staged
    unfreezing compare across libraries.
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
class Rename:
    """How a library names (and shapes) the rv tensors whose keys match `pattern`; used both ways by rv_models.convert.

    `replacement` is an re.sub replacement: a template, or a function of the match for names computed from it
    (torchvision's ConvNeXt keeps stage i's blocks at features.{2i+1}). `shape`, when given, is the library's shape of
    the tensor from rv's (torchvision's ConvNeXt layer scale is (C, 1, 1) where rv's is (C,)); it is for tensors whose
    shape the arch fixes, whatever the num_classes, in_chans or image size.
    """

    pattern: str  # regex on the rv key; a family's renames are tried in order, the first match wins
    replacement: str | Callable[[re.Match[str]], str]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None

    def apply(self, rv_key: str) -> str | None:
        """The library key of `rv_key`, or None when the pattern does not match it."""
        new_key, count = re.subn(self.pattern, self.replacement, rv_key)
        return new_key if count else None


@dataclass(frozen=True)
class Family:
    """Everything known about one model family, for every arch of it and every library implementing it."""

    name: str  # "resnet", "vit", "convnext": the family's name in configs, results and sweep specs
    title: str  # "ResNet", "ViT", "ConvNeXt": the family's name in messages
    configs: Mapping[str, Any]  # rv arch name -> its rv architecture config, small to large
    create: Callable[..., nn.Module]  # (arch, **options) -> randomly initialised rv model
    layouts: Mapping[str, Layout]  # library -> its layout; rv and timm share arch names
    torchvision: Mapping[str, tuple[str, str]]  # arch -> (builder name, weights enum name); only archs it has
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]  # the family's usual training optimizer
    input_multiple: Callable[[Any], int]  # config -> the input side must be a multiple of this (a ViT's patch)
    min_image_size: Callable[[Any], int]  # config -> the smallest input side every library's model runs on
    takes_image_size: bool  # whether builders size the model for its input (a ViT's position embedding)
    macs: Callable[[Any, int, int], dict[str, int]]  # (config, image side, classes) -> MACs per image by group
    # library -> how it names (and shapes) rv's tensors; a library not listed uses rv's names and shapes
    renames: Mapping[str, tuple[Rename, ...]] = field(default_factory=dict)
    # library -> builder keyword arguments that make its model compute what rv's does (stochastic depth off)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # (rv model, rv state dict of pretrained weights) -> the state dict fitted to the model's input size, for a
    # family whose weights depend on it (a ViT resamples its position embedding); None: weights fit any input
    fit_weights: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if (
            set(self.layouts) != set(LIBRARIES)
            or not self.torchvision.keys() <= self.configs.keys()
            or not set(self.renames) | set(self.options) <= set(LIBRARIES[1:])
        ):
            raise ValueError(
                f"family {self.name}: needs a layout per library, torchvision names of its archs, and renames and "
                f"options only for {', '.join(LIBRARIES[1:])}"
            )

    def archs(self, library: str = "rv") -> list[str]:
        """The family's rv arch names that `library` implements, small to large."""
        return list(self.torchvision if library == "torchvision" else self.configs)

    def library_name(self, arch: str, library: str) -> str:
        """The name `library` builds `arch` by: torchvision's own, the rv name for rv and timm."""
        return self.torchvision[arch][0] if library == "torchvision" else arch

    def input_multiple_of(self, arch: str) -> int:
        """The input side of `arch` must be a multiple of this (its patch size for a ViT, 1 for a ResNet)."""
        return self.input_multiple(self.configs[arch])

    def min_image_size_of(self, arch: str) -> int:
        """The smallest input side `arch` runs on in every library (32 px for a ConvNeXt, its patch for a ViT)."""
        return self.min_image_size(self.configs[arch])

    def build(self, arch: str, library: str, *, num_classes: int = 1000, image_size: int | None = None) -> nn.Module:
        """`library`'s `arch` (one of `archs(library)`) with random weights, in train mode as constructed: the one way
        every library's model is built.

        The library gets the family's `options` for it; `image_size` is passed only to families whose models are
        sized for one input (`takes_image_size`). Build under `torch.device("meta")` for a weightless model.
        """
        options = dict(self.options.get(library, {}), num_classes=num_classes)
        if self.takes_image_size and image_size is not None:
            options["image_size" if library == "torchvision" else "img_size"] = image_size
        if library == "rv":
            return self.create(arch, **options)
        if library == "torchvision":
            import torchvision.models

            return torchvision.models.get_model(self.library_name(arch, library), weights=None, **options)
        import timm

        # num_classes always explicit: timm's default head for some ViTs (large/32, huge/14) is empty.
        return timm.create_model(arch, pretrained=False, **options)

    def analytic_macs(self, arch: str, image_size: int, num_classes: int = 1000) -> dict[str, int]:
        """Closed-form MACs per image of `arch` on a square input, by canonical group, input to output."""
        return self.macs(self.configs[arch], image_size, num_classes)
