"""Translate state dicts between rv, torchvision and timm naming.

rv is the hub: every conversion maps source keys to rv keys, then rv keys to destination keys. rv and timm share
names for all archs and torchvision shares ResNet names, so only torchvision's ViT needs renaming (the renames are
in the family's spec). Tensors are passed through untouched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch

from rv_models.family import LIBRARIES
from rv_models.registry import FAMILIES, create_model, family_of, library_archs

__all__ = ["LIBRARIES", "TORCHVISION_NAMES", "convert_state_dict", "library_archs"]

# rv arch -> torchvision builder name (torchvision has no tiny/small ViT); timm uses the rv names themselves
TORCHVISION_NAMES: dict[str, str] = {
    arch: family.library_name(arch, "torchvision") for family in FAMILIES for arch in family.archs("torchvision")
}


@functools.lru_cache(maxsize=None)
def _rv_keys(arch: str) -> tuple[str, ...]:
    """State-dict keys of the rv model, built on the meta device so no memory is allocated."""
    with torch.device("meta"):
        return tuple(create_model(arch).state_dict())


def _torchvision_key(rv_key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in renames:
        new_key, count = re.subn(pattern, replacement, rv_key)
        if count:
            return new_key
    return rv_key


def _key_map(arch: str, library: str) -> dict[str, str]:
    """rv key -> key of the same tensor in `library`, for every tensor of `arch`."""
    if arch not in library_archs(library):
        raise ValueError(f"{library} has no {arch!r}; valid: {', '.join(library_archs(library))}")
    keys = _rv_keys(arch)
    if library == "torchvision":
        renames = family_of(arch).torchvision_renames
        return {key: _torchvision_key(key, renames) for key in keys}
    return {key: key for key in keys}


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], src: str, dst: str, arch: str
) -> dict[str, torch.Tensor]:
    """Rename the keys of a `src` ("rv", "torchvision" or "timm") state dict of `arch` (an rv name) to `dst` naming.

    The key set must be exactly the one `src` uses for `arch` (any num_classes, in_chans or image size); otherwise
    a ValueError names the missing and unexpected keys. The tensors themselves are shared, not copied.
    """
    src_map, dst_map = _key_map(arch, src), _key_map(arch, dst)
    expected = set(src_map.values())
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match {src} {arch}: "
            f"missing keys [{_listing(missing)}], unexpected keys [{_listing(unexpected)}]"
        )
    return {dst_map[rv_key]: state_dict[src_key] for rv_key, src_key in src_map.items()}
