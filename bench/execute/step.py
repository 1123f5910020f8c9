"""Build the callable that one timed iteration runs, for each mode.

- inference: `eval()` and `torch.inference_mode`, forward only, eager and compiled alike. Inductor
  freezes when grad mode is off at compile time (`torch.is_grad_enabled()`, False under both
  inference_mode and no_grad); on torch 2.14 a frozen model compiled under inference_mode runs the
  freeze pass and is as fast as one compiled under no_grad, so freezing cells keep the
  inference_mode of every other inference cell and the eager baseline.
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
loss and optimizer stay eager); `reduce-overhead` steps mark a CUDA-graph step boundary; the
`-freeze` modes set Inductor's freezing switch for the cell (`inductor_freezing`).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.config.cell import split_compile
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
    mode, _ = split_compile(compile_mode)
    return torch.compile(model, mode=None if mode == "default" else mode)


def inductor_freezing(compile_mode: str) -> contextlib.AbstractContextManager:
    """Inductor's process-global freezing switch set to what a compiled cell's mode asks for, and
    restored on exit (the worker measures many cells in one process).

    It must hold for the cell's whole life, not just the `torch.compile` call: dynamo reads it
    while tracing (parameters become static inputs) and Inductor while compiling, at the first step
    and at any recompilation. `torch.compile(options=...)` would reach Inductor only. Plain compile
    cells set it off, so TORCHINDUCTOR_FREEZING=1 cannot turn them into frozen ones. Eager cells
    leave it alone (importing Inductor's config costs seconds).
    """
    if compile_mode == "none":
        return contextlib.nullcontext()
    from torch._inductor import config

    return config.patch(freezing=split_compile(compile_mode)[1])


def freezing_enabled(compile_mode: str) -> bool:
    """Whether a cell compiled in `compile_mode` freezes: Inductor's switch as it stands now, for the
    results row (read inside `inductor_freezing`, so it is the state the cell ran with)."""
    if compile_mode == "none":
        return False
    from torch._inductor import config

    return bool(config.freezing)


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
