"""Construct a model's layers without their default initialisation, so the model's own scheme runs once.

nn.Linear and nn.Conv2d initialise themselves when constructed (kaiming-uniform: random numbers for
every weight); a model that then applies its own scheme pays for the random numbers twice, most of a
large model's construction time. `deferred_init` constructs the layers on the meta device (no storage,
no random numbers) and then allocates them, uninitialised, on the device the caller builds on (the
default device: the CPU, or the one of an enclosing `with torch.device(...)`). The model's init must
then set every parameter and buffer, calling `reset_parameters` on the layers that keep PyTorch's default.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def deferred_init(model: nn.Module) -> Iterator[None]:
    """Layers created inside the block get storage on the caller's device, but no values."""
    device = torch.get_default_device()
    with torch.device("meta"):
        yield
    model.to_empty(device=device)
