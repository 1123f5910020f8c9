"""The model registry: which (arch, impl) pairs exist and how to build each one.

Arch names are timm-style (resnet50, vit_base_patch16_224); every library's own name for the
same network comes from the family specs of rv_models (rv_models.family), so the rest of the
harness speaks one vocabulary. A pair exists only where the library really has that network
(torchvision has no ViT-Tiny or ViT-Small).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.errors import UsageError
from rv_models.family import LIBRARIES, Family
from rv_models.registry import FAMILIES, family_of, list_models

__all__ = ["FAMILY_NAMES", "IMPLS", "ModelEntry", "family_spec", "get_entry", "list_archs", "list_entries"]

IMPLS = LIBRARIES  # the implementations compared: rv and the two libraries it mirrors
FAMILY_NAMES = tuple(family.name for family in FAMILIES)  # "resnet", "vit", "convnext"
DEFAULT_IMAGE_SIZE = 224
# The largest input side any command takes: 8x the largest inputs published for these families
# (~518 px), while one image (3 x 4096^2 fp32, 200 MB) and a model's largest activations at batch 1
# still fit a machine's memory; past it `rvbench flops` alone would allocate 120 GB at 100000 px.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ModelEntry:
    """One buildable (arch, impl) pair and what the harness needs to know about it."""

    arch: str  # timm-style name shared by all impls
    impl: str  # "rv", "torchvision" or "timm"
    family: str  # the family's name: "resnet", "vit", "convnext"
    lib_name: str  # the name inside the implementing library, e.g. "vit_b_16"
    image_size: int = DEFAULT_IMAGE_SIZE  # default square input side
    tv_weights: str | None = None  # torchvision weights enum name: its meta has published ops

    @property
    def spec(self) -> Family:
        """The spec of the arch's family (rv_models.family): layouts, optimizer, image-size rule, MACs."""
        return family_of(self.arch)

    def check_image_size(self, image_size: int) -> None:
        """UsageError unless the input side is one every impl of this arch accepts, by the family's spec.

        Each family has a smallest input (a ConvNeXt crashes below 32 px with an obscure torch error);
        ViTs need a whole number of patches (torchvision refuses anything else at build time); no input
        is over MAX_IMAGE_SIZE.
        """
        smallest = self.spec.min_image_size_of(self.arch)
        if image_size < smallest:
            raise UsageError(f"{self.arch} needs an image size >= {smallest} px, got {image_size}")
        if image_size > MAX_IMAGE_SIZE:
            raise UsageError(f"image size {image_size} px is over rvbench's limit of {MAX_IMAGE_SIZE} px")
        patch = self.spec.input_multiple_of(self.arch)
        if image_size % patch:
            raise UsageError(
                f"{self.arch} needs an image size that is a multiple of its patch size {patch}, got {image_size}"
            )

    def build(self, num_classes: int = 1000, image_size: int | None = None) -> nn.Module:
        """Build the model with random weights (train mode, as constructed), by the family's `Family.build`.

        `image_size` matters only for families whose models are sized for one input side (a ViT's
        position embedding); None means the entry's default. Build under `torch.device("meta")` to
        get a weightless model for counting.
        """
        size = self.image_size if image_size is None else image_size
        self.check_image_size(size)
        return self.spec.build(self.arch, self.impl, num_classes=num_classes, image_size=size)


def _make_entries() -> dict[tuple[str, str], ModelEntry]:
    entries = {}
    for family in FAMILIES:
        for arch in family.archs():
            for impl in IMPLS:
                if arch in family.archs(impl):
                    tv_weights = family.torchvision[arch][1] if impl == "torchvision" else None
                    lib_name = family.library_name(arch, impl)
                    entries[(arch, impl)] = ModelEntry(arch, impl, family.name, lib_name, tv_weights=tv_weights)
    return entries


_ENTRIES = _make_entries()


def family_spec(name: str) -> Family:
    """The spec of the family called `name` (one of FAMILY_NAMES); UsageError naming the valid ones otherwise."""
    _check_names("model family", [name], list(FAMILY_NAMES))
    return FAMILIES[FAMILY_NAMES.index(name)]


def list_archs() -> list[str]:
    """All registered arch names, family by family (FAMILIES order), small to large."""
    return list_models()


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
