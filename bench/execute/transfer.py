"""Transfer learning set-up: the starting weights, the model of each implementation, the optimizer, one epoch of
training and the validation accuracy. bench.measure.transfer times and records them epoch by epoch.

Every implementation of a run starts from the same weights: the pretrained ones (rv naming, found in the local
torch hub or Hugging Face cache through rv_models.load_pretrained) or, when none are cached, rv's seeded random
initialisation, converted to each library's naming (rv_models.convert); each new head is drawn from the same seed.
So rv, torchvision and timm differ only in their code, and their training curves are comparable step by step.
Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.config.precision import PrecisionPlan, autocast
from bench.data.augment import augment, model_input, train_batches
from bench.models import get_entry
from bench.models.registry import family_spec
from rv_models import convert_state_dict, load_pretrained
from rv_models.convert import library_archs
from rv_models.transfer import Stage, StageSchedule, replace_head

STRATEGIES = ("linear", "staged", "full", "scratch")
RANDOM = "random"  # the weights label of a randomly initialised backbone
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_BATCH = 256


@dataclass(frozen=True)
class Weights:
    """Starting weights of a run, in rv naming for a 1000-class head, and the input normalisation they expect."""

    label: str  # e.g. "torchvision ResNet18_Weights.IMAGENET1K_V1", "timm timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "random"
    state: dict[str, torch.Tensor]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def random_weights(arch: str, image_size: int, seed: int) -> Weights:
    """rv's own initialisation of `arch`, drawn right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return Weights(RANDOM, get_entry(arch, "rv").build(image_size=image_size).state_dict())


def _source_label(arch: str, source: str) -> tuple[str, tuple, tuple]:
    """How the `source` library names its default weights of `arch`, and their normalisation."""
    if source == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(get_entry(arch, "torchvision").lib_name).DEFAULT
        preset = weights.transforms()
        return f"torchvision {weights}", tuple(preset.mean), tuple(preset.std)
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return f"timm {cfg.hf_hub_id}", tuple(cfg.mean), tuple(cfg.std)


def pretrained_weights(arch: str, image_size: int, seed: int) -> tuple[Weights, str | None]:
    """The cached pretrained weights of `arch` (torchvision's first, then timm's), else `random_weights` and the
    reason, naming every file that was missing. A ViT's position embedding is resampled to the image size."""
    missing = []
    for source in ("torchvision", "timm"):
        if arch not in library_archs(source):
            continue
        model = get_entry(arch, "rv").build(image_size=image_size)
        try:
            load_pretrained(model, arch, source)
        except (FileNotFoundError, ValueError) as exc:
            missing.append(str(exc))
            continue
        label, mean, std = _source_label(arch, source)
        return Weights(label, model.state_dict(), mean, std), None
    return random_weights(arch, image_size, seed), "; ".join(missing)


def build_model(arch: str, impl: str, weights: Weights, image_size: int, num_classes: int, seed: int,
                device: torch.device) -> nn.Module:
    """`impl`'s `arch` holding `weights` (converted to its naming), with a fresh num_classes head drawn from `seed`."""
    model = get_entry(arch, impl).build(image_size=image_size)
    model.load_state_dict(convert_state_dict(weights.state, "rv", impl, arch))
    torch.manual_seed(seed)
    return replace_head(model, num_classes).to(device)


@dataclass(frozen=True)
class TransferRun:
    """One training run: an implementation of an arch trained with one strategy on a decoded set."""

    arch: str
    impl: str
    strategy: str  # one of STRATEGIES
    epochs: int
    batch_size: int
    image_size: int
    precision: str
    device: str
    seed: int
    num_classes: int
    lr: float | None = None  # the head's learning rate; None: the family optimizer's default


def schedule_for(strategy: str, epochs: int) -> StageSchedule:
    """linear: the head alone; staged: `StageSchedule.staged`; full: everything, the backbone at a tenth of the
    head's learning rate; scratch: everything at one learning rate (no part is pretrained)."""
    if strategy == "linear":
        return StageSchedule((Stage(epochs, train_last=1),))
    if strategy == "staged":
        return StageSchedule.staged(epochs)
    return StageSchedule((Stage(epochs),), backbone_lr_scale=1.0 if strategy == "scratch" else 0.1)


def make_optimizer(model: nn.Module, family: str, schedule: StageSchedule, lr: float | None) -> torch.optim.Optimizer:
    """The family's usual optimizer (SGD with momentum for ResNets, AdamW for ViTs, from its spec) over every
    parameter group of the schedule; the head at `lr` (None: the family's default), the backbone below it."""
    groups = schedule.lr_groups(model, 1.0)
    optimizer = family_spec(family).optimizer(groups[0]["params"])
    head_lr = optimizer.defaults["lr"] if lr is None else lr
    optimizer.param_groups[0].update(name=groups[0]["name"], lr=groups[0]["lr"] * head_lr)
    for group in groups[1:]:
        optimizer.add_param_group({**group, "lr": group["lr"] * head_lr})
    return optimizer


@dataclass
class Trainer:
    """A model, its optimizer and its precision, with the input normalisation of its weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: PrecisionPlan
    device: torch.device
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        # amp-fp16 needs loss scaling; every other precision trains without it.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.plan.autocast_dtype == torch.float16 else None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return model_input(x, self.image_size, self.mean, self.std)

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Train one epoch over the device tensors x (uint8) and y, yielding each step's loss (a device tensor,
        so the loop never waits for the GPU)."""
        for idx in train_batches(len(x), batch_size, generator):
            idx = idx.to(self.device)
            images = self._input(augment(x[idx], generator))
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.plan, self.device):
                loss = F.cross_entropy(self.model(images), y[idx])
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            yield loss.detach()

    @torch.no_grad()
    def top1(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy (0..1) on the device tensors x (uint8, no augmentation) and y, in eval mode; the train
        and eval modes of every module are restored afterwards."""
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with autocast(self.plan, self.device):
            for start in range(0, len(x), EVAL_BATCH):
                logits = self.model(self._input(x[start:start + EVAL_BATCH]))
                correct += (logits.argmax(1) == y[start:start + EVAL_BATCH]).sum()
        for module, training in modes.items():
            module.train(training)
        return correct.item() / len(x)


def prepare(run: TransferRun, weights: Weights, plan: PrecisionPlan) -> tuple[Trainer, StageSchedule]:
    """The run's model (from `weights`), its stage schedule and optimizer, ready for epoch 0."""
    device = torch.device(run.device)
    model = build_model(run.arch, run.impl, weights, run.image_size, run.num_classes, run.seed, device)
    schedule = schedule_for(run.strategy, run.epochs)
    optimizer = make_optimizer(model, get_entry(run.arch, run.impl).family, schedule, run.lr)
    return Trainer(model, optimizer, plan, device, run.image_size, weights.mean, weights.std), schedule
