"""The model registry: which (arch, impl) pairs exist and how to build each one.

Arch names are timm-style (resnet50, vit_base_patch16_224); every library's own name for the
same network is mapped here, so the rest of the harness speaks one vocabulary. A pair exists
only where the library really has that network (torchvision has no ViT-Tiny or ViT-Small).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from bench.config.cell import IMPLS
from bench.errors import UsageError

__all__ = ["IMPLS", "ModelEntry", "get_entry", "list_archs", "list_entries"]

DEFAULT_IMAGE_SIZE = 224

# arch -> (family, torchvision builder name or None, torchvision weights enum name or None)
_ARCHS: dict[str, tuple[str, str | None, str | None]] = {
    "resnet18": ("resnet", "resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet", "resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet", "resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet", "resnet101", "ResNet101_Weights"),
    "resnet152": ("resnet", "resnet152", "ResNet152_Weights"),
    "vit_tiny_patch16_224": ("vit", None, None),
    "vit_small_patch16_224": ("vit", None, None),
    "vit_base_patch16_224": ("vit", "vit_b_16", "ViT_B_16_Weights"),
    "vit_base_patch32_224": ("vit", "vit_b_32", "ViT_B_32_Weights"),
    "vit_large_patch16_224": ("vit", "vit_l_16", "ViT_L_16_Weights"),
    "vit_large_patch32_224": ("vit", "vit_l_32", "ViT_L_32_Weights"),
    "vit_huge_patch14_224": ("vit", "vit_h_14", "ViT_H_14_Weights"),
}


@dataclass(frozen=True)
class ModelEntry:
    """One buildable (arch, impl) pair and what the harness needs to know about it."""

    arch: str  # timm-style name shared by all impls
    impl: str  # "rv", "torchvision" or "timm"
    family: str  # "resnet" or "vit"
    lib_name: str  # the name inside the implementing library, e.g. "vit_b_16"
    image_size: int = DEFAULT_IMAGE_SIZE  # default square input side
    tv_weights: str | None = None  # torchvision weights enum name: its meta has published ops

    def check_image_size(self, image_size: int) -> None:
        """UsageError unless the input side is one every impl of this arch accepts.

        ViTs need a whole number of patches (torchvision refuses anything else at build time);
        16 px is the smallest input the harness accepts for any model.
        """
        if image_size < 16:
            raise UsageError(f"image size must be >= 16 px, got {image_size}")
        patch = int(re.search(r"patch(\d+)", self.arch).group(1)) if self.family == "vit" else 1
        if image_size % patch:
            raise UsageError(
                f"{self.arch} needs an image size that is a multiple of its patch size {patch}, got {image_size}"
            )

    def build(self, num_classes: int = 1000, image_size: int | None = None) -> nn.Module:
        """Build the model with random weights (train mode, as constructed).

        `image_size` matters only for ViTs, whose position embedding is sized for one input
        side; None means the entry's default. Build under `torch.device("meta")` to get a
        weightless model for counting.
        """
        size = self.image_size if image_size is None else image_size
        self.check_image_size(size)
        vit_kwargs = {"img_size": size} if self.family == "vit" else {}
        if self.impl == "rv":
            import rv_models

            return rv_models.create_model(self.lib_name, num_classes=num_classes, **vit_kwargs)
        if self.impl == "torchvision":
            import torchvision.models

            builder = getattr(torchvision.models, self.lib_name)
            tv_kwargs = {"image_size": size} if self.family == "vit" else {}
            return builder(weights=None, num_classes=num_classes, **tv_kwargs)
        import timm

        # num_classes always explicit: timm's default head for some ViTs (large/32, huge/14) is empty.
        return timm.create_model(self.lib_name, pretrained=False, num_classes=num_classes, **vit_kwargs)


def _make_entries() -> dict[tuple[str, str], ModelEntry]:
    entries = {}
    for arch, (family, tv_name, tv_weights) in _ARCHS.items():
        entries[(arch, "rv")] = ModelEntry(arch, "rv", family, arch)
        if tv_name is not None:
            entries[(arch, "torchvision")] = ModelEntry(arch, "torchvision", family, tv_name, tv_weights=tv_weights)
        entries[(arch, "timm")] = ModelEntry(arch, "timm", family, arch)
    return entries


_ENTRIES = _make_entries()


def list_archs() -> list[str]:
    """All registered arch names, ResNets then ViTs, small to large."""
    return list(_ARCHS)


def _check_names(what: str, names: list[str], valid: list[str]) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def list_entries(archs: list[str] | None = None, impls: list[str] | None = None) -> list[ModelEntry]:
    """Registered entries, optionally filtered by arch and impl names (None means all).

    Unknown names are an error rather than an empty result, so a typo cannot silently skip models.
    Pairs that do not exist (torchvision ViT-Tiny) are simply absent from the result.
    """
    if archs is not None:
        _check_names("arch", archs, list_archs())
    if impls is not None:
        _check_names("impl", impls, list(IMPLS))
    return [
        e
        for e in _ENTRIES.values()
        if (archs is None or e.arch in archs) and (impls is None or e.impl in impls)
    ]


def get_entry(arch: str, impl: str) -> ModelEntry:
    """The entry for one pair; UsageError naming the valid choices if it is not registered."""
    _check_names("arch", [arch], list_archs())
    _check_names("impl", [impl], list(IMPLS))
    entry = _ENTRIES.get((arch, impl))
    if entry is None:
        have = [e.impl for e in _ENTRIES.values() if e.arch == arch]
        raise UsageError(f"{impl} has no {arch}; impls with {arch}: {', '.join(have)}")
    return entry
