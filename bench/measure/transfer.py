"""Time to accuracy: train a TransferRun epoch by epoch and measure each epoch, then the run.

Per epoch: the mean training loss, validation top-1, the epoch's training and evaluation seconds, the cumulative
time (training plus evaluation: the clock a user waits on, as in DAWNBench and MLPerf Training), images per second
of training and memory (CUDA's peak allocated over the epoch, else the approximate RSS growth, as
bench.measure.memory measures a cell). Per run: the final accuracy and the time at which validation top-1 first
reached the target, or that it was not reached. Model building and data decoding are not timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from bench.config.precision import numerics, numerics_state, plan_for
from bench.data.datasets import ImageSet
from bench.execute.transfer import TransferRun, Weights, prepare
from bench.measure.memory import CudaPeak, RssPeak, weights_bytes
from bench.models.training import optimizer_name
from rv_models.transfer import count_trainable, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trained(model: torch.nn.Module) -> str:
    """The parameter groups that train now, e.g. "head", "layer4,head", "all"."""
    groups = [g for g in param_groups(model) if any(p.requires_grad for p in g.params)]
    return "all" if len(groups) == len(param_groups(model)) else ",".join(g.name for g in groups)


class Diverged(RuntimeError):
    """The training loss became nan or inf: the run is over (its weights are no longer numbers); the others go on."""


def _check_finite(losses: torch.Tensor, epoch: int) -> None:
    """Diverged, naming the epoch and the first step whose loss is not finite. Checked once per epoch, where the
    epoch's mean loss is read anyway, so the training loop never waits on the device."""
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise Diverged(f"diverged: the training loss became {losses[step].item():g} at epoch {epoch}, step "
                       f"{step + 1} of {len(losses)}; a smaller --lr may train")


def measure_transfer(run: TransferRun, weights: Weights, data: ImageSet, target_acc: float,
                     budget_s: float | None = None) -> Iterator[dict]:
    """Train `run` from `weights` on `data` (already on the run's device), yielding one row of columns per epoch
    (record "epoch") and then one for the run (record "run"). A budget stops the run at the first epoch end past
    `budget_s` seconds of cumulative time. Raises Diverged at the end of an epoch whose loss was nan or inf."""
    plan = plan_for(run.precision)
    device = torch.device(run.device)
    generator = torch.Generator().manual_seed(run.seed)
    time_s, reached_s, top1, epoch = 0.0, None, float("nan"), 0
    with numerics(plan, device):
        trainer, schedule = prepare(run, weights, plan)
        common = {"optimizer_used": optimizer_name(trainer.optimizer), **numerics_state()}
        for epoch in range(1, schedule.epochs + 1):
            schedule.apply(trainer.model, epoch - 1)
            if device.type == "cuda":
                peak = CudaPeak(device)
                peak.start(lambda: trainer.optimizer.zero_grad(set_to_none=True))
            else:
                peak = RssPeak()
                peak.start()
            start = time.perf_counter()
            try:
                losses = torch.stack(list(trainer.train_epoch(data.train_x, data.train_y, run.batch_size,
                                                              generator)))
                _sync(device)
                train_s = time.perf_counter() - start
                _check_finite(losses, epoch)
                top1 = trainer.top1(data.val_x, data.val_y)
                eval_s = time.perf_counter() - start - train_s
            finally:  # a failed or interrupted epoch must not leave the RSS sampler's thread running
                peak.stop()
            time_s += train_s + eval_s
            if reached_s is None and top1 >= target_acc:
                reached_s = time_s
            yield {
                **common, "record": "epoch", "epoch": epoch, "trained_groups": _trained(trainer.model),
                "params_trainable": count_trainable(trainer.model), "train_loss": losses.float().mean().item(),
                "val_top1": top1, "epoch_s": train_s, "eval_s": eval_s, "time_s": time_s,
                "images_per_s": len(losses) * min(run.batch_size, len(data.train_x)) / train_s,
                **peak.columns(weights_bytes(trainer.model)),
            }
            if budget_s is not None and time_s >= budget_s and epoch < schedule.epochs:
                break
    params = sum(p.numel() for p in trainer.model.parameters())
    if reached_s is None:
        outcome = f"target {target_acc:.0%} not reached in {epoch} epoch(s)"
    else:
        outcome = f"target {target_acc:.0%} reached after {reached_s:.1f} s"
    stopped = f"; stopped by the {budget_s:g} s budget" if epoch < schedule.epochs else ""
    yield {**common, "record": "run", "epoch": epoch, "params_total": params, "val_top1": top1, "time_s": time_s,
           "time_to_target_s": reached_s, "message": outcome + stopped}
