"""How a model is set up to run in each mode: its train/eval state and trainability, and its optimizer.

The one home of both, for every stage that needs them: the measured step (bench.execute), the memory
prediction that runs the same step on fake tensors (bench.counting.memory), and the commands.

Optimizer choices: "default" is the family's usual one, from its spec (rv_models.family): SGD with
momentum for ResNets, AdamW for ViTs and ConvNeXts (their optimizer state, and so their memory, differs); "sgd"
is timm's benchmark optimizer for every family, "adamw" the ViT one for every family.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.registry import family_spec
from rv_models.transfer import freeze_backbone, train_mode
from rv_models.vit import adamw

DEFAULT_OPTIMIZER = "default"
OPTIMIZERS = (DEFAULT_OPTIMIZER, "sgd", "adamw")


def prepare_mode(model: nn.Module, mode: str) -> None:
    """Put the model in the train/eval state and trainability the mode needs (in place).

    finetune is the transfer-learning setup: `freeze_backbone` leaves only the head trainable, and
    modules without trainable parameters run in eval mode, so the frozen backbone's BatchNorm
    statistics stay fixed too.
    """
    if mode == "inference":
        model.eval()
    elif mode == "train":
        model.train()
    else:
        train_mode(freeze_backbone(model))


def _sgd_nesterov(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """timm's benchmark.py optimizer: `create_optimizer_v2(opt="sgd")` is SGD with Nesterov momentum
    0.9 and no weight decay (the learning rate does not change the work)."""
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9, nesterov=True, weight_decay=0.0)


_OPTIMIZERS = {"sgd": _sgd_nesterov, "adamw": adamw}


def make_optimizer(model: nn.Module, family: str, choice: str = DEFAULT_OPTIMIZER) -> torch.optim.Optimizer:
    """The optimizer `choice` (one of OPTIMIZERS) over the model's trainable parameters; "default" is
    the usual one of the model's family (named as in ModelEntry.family)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return family_spec(family).optimizer(params) if choice == DEFAULT_OPTIMIZER else _OPTIMIZERS[choice](params)


def optimizer_name(optimizer: torch.optim.Optimizer | None) -> str | None:
    """The optimizer a row ran, e.g. "sgd-nesterov", "sgd-momentum", "adamw"; None for inference."""
    if optimizer is None:
        return None
    name = type(optimizer).__name__.lower()
    if isinstance(optimizer, torch.optim.SGD):
        group = optimizer.param_groups[0]
        name += "-nesterov" if group["nesterov"] else "-momentum" if group["momentum"] else ""
    return name
