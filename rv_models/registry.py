"""The model families, and model names, construction and layout recognition derived from their specs."""

from __future__ import annotations

from typing import Any

from torch import nn

from rv_models import convnext, resnet, vit
from rv_models.family import LIBRARIES, Family, Layout

FAMILIES: tuple[Family, ...] = (resnet.FAMILY, vit.FAMILY, convnext.FAMILY)

_FAMILY_OF: dict[str, Family] = {arch: family for family in FAMILIES for arch in family.archs()}


def list_models() -> list[str]:
    """Names create_model accepts: each family's archs in FAMILIES order, small to large."""
    return list(_FAMILY_OF)


def family_of(arch: str) -> Family:
    """The spec of the family `arch` (an rv name) belongs to; ValueError naming the valid archs otherwise."""
    if arch not in _FAMILY_OF:
        raise ValueError(f"unknown model {arch!r}; valid: {', '.join(_FAMILY_OF)}")
    return _FAMILY_OF[arch]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised model by name.

    kwargs go to the family's `create`: num_classes and in_chans for all; zero_init_residual for ResNets;
    img_size, drop_rate and drop_path_rate for ViTs.
    """
    return family_of(name).create(name, **kwargs)


def library_archs(library: str) -> list[str]:
    """The rv arch names that `library` also implements."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; valid: {', '.join(LIBRARIES)}")
    return [arch for family in FAMILIES for arch in family.archs(library)]


def layout_of(model: nn.Module) -> Layout:
    """The layout of an rv, torchvision or timm model of any family, recognised by its classifier and body paths."""
    for family in FAMILIES:
        for layout in family.layouts.values():
            if layout.matches(model):
                return layout
    expected = " or ".join(family.title for family in FAMILIES)
    raise ValueError(
        f"unsupported model {type(model).__name__}: expected a {expected} from rv_models, torchvision or timm"
    )
