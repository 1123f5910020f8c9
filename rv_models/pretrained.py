"""Load torchvision's or timm's pretrained ImageNet weights into an rv model, from the local cache only.

Benchmark machines are often offline, and a download stalled on the network would hang a sweep; so the cache
files are located here and a missing file is an immediate, explicit error. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from rv_models.convert import LIBRARIES, TORCHVISION_NAMES, convert_state_dict, library_archs
from rv_models.registry import family_of

_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # the files a timm Hugging Face repo may hold


def _torchvision_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default weights for arch, from the torch.hub checkpoint cache."""
    import torchvision

    weights = torchvision.models.get_model_weights(TORCHVISION_NAMES[arch]).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise FileNotFoundError(
            f"torchvision weights {weights} for {arch} are not in the local cache (looked for {path}); "
            f"nothing is downloaded: fetch them on a networked machine with "
            f"`torchvision.models.{weights}.get_state_dict()` and copy the file there"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _timm_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """timm's default weights for arch, from the Hugging Face hub cache, loaded through timm (weights_only)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg.num_classes != 1000:
        raise ValueError(
            f"timm's default weights for {arch} ({cfg.hf_hub_id}) have no ImageNet-1k classifier head; "
            "use source='torchvision'"
        )
    cached = (try_to_load_from_cache(cfg.hf_hub_id, name) for name in _TIMM_FILES)
    path = next((found for found in cached if isinstance(found, str)), None)
    if path is None:
        raise FileNotFoundError(
            f"timm weights {cfg.hf_hub_id} for {arch} are not in the local Hugging Face cache; nothing is "
            f"downloaded: fetch them on a networked machine with `timm.create_model({arch!r}, pretrained=True)` "
            f"and copy the hub cache over"
        )
    model = timm.create_model(arch, pretrained=True, num_classes=1000, pretrained_cfg_overlay={"file": path})
    return model.state_dict()


def load_pretrained(model: nn.Module, arch: str, source: str = "torchvision") -> nn.Module:
    """Load `source`'s ("torchvision" or "timm") default pretrained weights for `arch` into the rv `model`.

    The model must have 1000 classes and 3 input channels. A model whose weights depend on its input size gets
    them fitted by its family's `fit_weights` (a ViT built for another image size: the position embedding
    resampled to its grid). Raises FileNotFoundError at once when the weights are not cached locally.
    """
    if source not in LIBRARIES[1:]:
        raise ValueError(f"unknown pretrained source {source!r}; valid: {', '.join(LIBRARIES[1:])}")
    if arch not in library_archs(source):
        raise ValueError(f"{source} has no {arch!r}; valid: {', '.join(library_archs(source))}")
    state = _torchvision_state_dict(arch) if source == "torchvision" else _timm_state_dict(arch)
    state = convert_state_dict(state, source, "rv", arch)
    fit = family_of(arch).fit_weights
    model.load_state_dict(state if fit is None else fit(model, state))
    return model
