"""Model names and construction by name."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from rv_models import resnet, vit

_MODELS: dict[str, Callable[..., nn.Module]] = {**resnet.MODELS, **vit.MODELS}


def list_models() -> list[str]:
    """Names create_model accepts: resnet18..resnet152, then the ViTs from tiny to huge."""
    return list(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised model by name.

    kwargs go to the builder: num_classes and in_chans for all; zero_init_residual for ResNets;
    img_size, drop_rate and drop_path_rate for ViTs.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(_MODELS)}")
    return _MODELS[name](**kwargs)
