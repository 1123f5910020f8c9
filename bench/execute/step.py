"""Build the callable that one timed iteration runs, for each mode.

- inference: `eval()` and `torch.inference_mode`, forward only.
- train: `train()`, forward + cross-entropy on fixed random labels + backward + optimizer step
  over every parameter. The optimizer is the family's usual one, from its spec (rv_models.family):
  SGD with momentum for ResNets, AdamW for ViTs (their optimizer state, and so their memory, differs).
- finetune: the transfer-learning setup. `rv_models.transfer.freeze_backbone` leaves only the head
  trainable; modules without trainable parameters run in eval mode, so the frozen backbone's
  BatchNorm statistics stay fixed too. Because no backbone parameter requires grad and the input
  does not either, autograd records nothing until the head: the backbone runs without building a
  graph, with the same outputs it would give inside one.

Gradients are dropped (`set_to_none`) at the start of each step, as a modern training loop does.
amp-fp16 steps use a GradScaler as real fp16 training must (its inf check costs one host sync per
step); fp16/bf16 cast weights and train them directly. torch.compile wraps the model only (the
loss and optimizer stay eager); `reduce-overhead` steps mark a CUDA-graph step boundary.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.config.precision import PrecisionPlan, autocast
from bench.models import family_spec
from rv_models.transfer import freeze_backbone


def prepare_mode(model: nn.Module, mode: str) -> None:
    """Put the model in the train/eval state and trainability the mode needs (in place)."""
    if mode == "inference":
        model.eval()
    elif mode == "train":
        model.train()
    else:
        freeze_backbone(model)
        model.eval()
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                module.train()


def make_optimizer(model: nn.Module, family: str) -> torch.optim.Optimizer:
    """The usual optimizer of the model's family (named as in ModelEntry.family), from the family's
    spec, over the trainable parameters."""
    return family_spec(family).optimizer([p for p in model.parameters() if p.requires_grad])


def compile_model(model: nn.Module, compile_mode: str) -> nn.Module:
    """Wrap in torch.compile with a fresh dynamo state (stale caches from earlier cells in the
    same process would count against the recompile limit); "none" returns the model unchanged."""
    if compile_mode == "none":
        return model
    torch._dynamo.reset()
    return torch.compile(model, mode=None if compile_mode == "default" else compile_mode)


def graphs_compiled() -> int:
    """Dynamo graphs compiled so far in this process (a recompilation adds one).

    `counters["stats"]["unique_graphs"]` is bumped once per compiled graph on every torch >= 2.0.
    """
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor,
              plan: PrecisionPlan, optimizer: torch.optim.Optimizer | None,
              cudagraph_steps: bool) -> Callable[[], None]:
    """The step closure: one forward (inference) or one full optimisation step (train/finetune)."""
    device = x.device

    def begin() -> None:
        if cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()

    if mode == "inference":
        def infer() -> None:
            begin()
            with torch.inference_mode(), autocast(plan, device):
                model(x)

        return infer

    assert optimizer is not None, "train and finetune steps need an optimizer"
    scaler = torch.amp.GradScaler(device.type) if plan.autocast_dtype == torch.float16 else None

    def train_step() -> None:
        begin()
        optimizer.zero_grad(set_to_none=True)
        with autocast(plan, device):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return train_step
