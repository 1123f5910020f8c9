"""Translate state dicts between rv, torchvision and timm naming.

rv is the hub: every conversion maps source keys to rv keys, then rv keys to destination keys, with the renames of
the family's spec (`Family.renames`: rv and timm share names for all archs, torchvision its ResNet names). A tensor a
library shapes differently (torchvision's ConvNeXt layer scale) is reshaped to rv's shape and then to the
destination's, a view; every other tensor is passed through untouched.
"""

from __future__ import annotations

import functools
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
def _rv_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of the rv model, built on the meta device so no memory is allocated."""
    with torch.device("meta"):
        return {key: tuple(t.shape) for key, t in create_model(arch).state_dict().items()}


def _key_map(arch: str, library: str) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """rv key -> (key of the same tensor in `library`, its shape there when it is not rv's), for every tensor."""
    if arch not in library_archs(library):
        raise ValueError(f"{library} has no {arch!r}; valid: {', '.join(library_archs(library))}")
    renames = family_of(arch).renames.get(library, ())
    key_map = {}
    for key, shape in _rv_shapes(arch).items():
        key_map[key] = (key, None)
        for rule in renames:
            new_key = rule.apply(key)
            if new_key is not None:
                key_map[key] = (new_key, rule.shape(shape) if rule.shape else None)
                break
    return key_map


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], src: str, dst: str, arch: str
) -> dict[str, torch.Tensor]:
    """Rename (and where a library shapes a tensor differently, reshape) the keys of a `src` ("rv", "torchvision" or
    "timm") state dict of `arch` (an rv name) to `dst` naming.

    The key set must be exactly the one `src` uses for `arch` (any num_classes, in_chans or image size); otherwise
    a ValueError names the missing and unexpected keys. The tensors themselves are shared (or viewed), not copied.
    """
    src_map, dst_map = _key_map(arch, src), _key_map(arch, dst)
    expected = {key for key, _ in src_map.values()}
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match {src} {arch}: "
            f"missing keys [{_listing(missing)}], unexpected keys [{_listing(unexpected)}]"
        )
    rv_shapes = _rv_shapes(arch)
    converted = {}
    for rv_key, (src_key, src_shape) in src_map.items():
        dst_key, dst_shape = dst_map[rv_key]
        tensor = state_dict[src_key]
        if src_shape is not None:
            tensor = tensor.reshape(rv_shapes[rv_key])
        converted[dst_key] = tensor if dst_shape is None else tensor.reshape(dst_shape)
    return converted
