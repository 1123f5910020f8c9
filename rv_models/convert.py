"""Translate state dicts between rv, torchvision and timm naming.

rv is the hub: every conversion maps source keys to rv keys, then rv keys to destination keys. rv and timm share
names for all archs and torchvision shares ResNet names, so only torchvision's ViT needs renaming. Tensors are passed
through untouched: torchvision's packed `in_proj_weight` stacks q, k, v exactly like rv's fused qkv.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch

from rv_models.registry import create_model, list_models

LIBRARIES = ("rv", "torchvision", "timm")

# rv arch -> torchvision builder name (torchvision has no tiny/small ViT); timm uses the rv names themselves
TORCHVISION_NAMES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "vit_base_patch16_224": "vit_b_16",
    "vit_base_patch32_224": "vit_b_32",
    "vit_large_patch16_224": "vit_l_16",
    "vit_large_patch32_224": "vit_l_32",
    "vit_huge_patch14_224": "vit_h_14",
}

# rv key pattern -> torchvision key; the first match wins, keys matching none are named alike in both
_TORCHVISION_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.encoder_layer_\1.ln_1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.encoder_layer_\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
    (r"^norm\.", "encoder.ln."),
    (r"^head\.", "heads.head."),
)


def library_archs(library: str) -> list[str]:
    """The rv arch names that `library` also implements."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; valid: {', '.join(LIBRARIES)}")
    return list(TORCHVISION_NAMES) if library == "torchvision" else list_models()


@functools.lru_cache(maxsize=None)
def _rv_keys(arch: str) -> tuple[str, ...]:
    """State-dict keys of the rv model, built on the meta device so no memory is allocated."""
    with torch.device("meta"):
        return tuple(create_model(arch).state_dict())


def _torchvision_key(rv_key: str) -> str:
    for pattern, replacement in _TORCHVISION_RENAMES:
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
        return {key: _torchvision_key(key) for key in keys}
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
