"""Transfer learning helpers: swap the classifier, freeze the backbone, unfreeze it group by group.

They work on every registered family's models from rv_models, torchvision and timm alike, because the harness
fine-tunes all three. Parameter groups are the canonical groups of the family's layout (rv_models.family), input to
output:
    ResNet: stem (conv1, bn1), layer1, layer2, layer3, layer4, head (fc)
    ConvNeXt: stem, stage1, stage2, stage3, stage4 (each with its downsampling layer), head (norm, fc)
    ViT:    patch_embed (patch projection, class token, position embedding), the blocks in BLOCK_GROUPS
            consecutive chunks ("blocks.0-2", ...), head (final norm and classifier)
Stage k trains the last k groups, so stage 1 trains the head group and stage len(groups) trains everything.
Freezing only switches requires_grad; `train_mode` also keeps frozen modules in eval mode, so a frozen BatchNorm's
running statistics stay put. A `StageSchedule` strings stages into epochs (the head first, then the last blocks, then
everything) with a lower learning rate for the backbone than for the head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from rv_models.family import BLOCKS
from rv_models.registry import family_of, layout_of, library_archs

BLOCK_GROUPS = 4  # ViT blocks unfreeze in this many chunks, mirroring ResNet's four stages


@dataclass(frozen=True)
class ParamGroup:
    """Consecutive parameters that are frozen and unfrozen together."""

    name: str
    params: tuple[nn.Parameter, ...]


def _chunk_blocks(groups: dict[str, list[nn.Parameter]]) -> list[ParamGroup]:
    """The groups in order, with the per-block ones (blocks.0 .. blocks.N-1) merged into BLOCK_GROUPS
    consecutive chunks named blocks.first-last."""
    blocks = [params for name, params in groups.items() if name.startswith(f"{BLOCKS}.")]
    chunks = []
    for g in range(BLOCK_GROUPS):
        first, end = g * len(blocks) // BLOCK_GROUPS, (g + 1) * len(blocks) // BLOCK_GROUPS
        if end > first:
            chunks.append(ParamGroup(f"{BLOCKS}.{first}-{end - 1}", tuple(p for b in blocks[first:end] for p in b)))
    merged: list[ParamGroup] = []
    for name, params in groups.items():
        if not name.startswith(f"{BLOCKS}."):
            merged.append(ParamGroup(name, tuple(params)))
        elif name == f"{BLOCKS}.0":
            merged += chunks
    return merged


def param_groups(model: nn.Module) -> list[ParamGroup]:
    """The model's parameters split into unfreezing groups, input to output (see the module docstring).

    The groups are the canonical groups of the model's layout (rv_models.family.Layout), blocks chunked.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    for group, part in layout_of(model).parts(model):
        groups.setdefault(group, []).extend(part.parameters() if isinstance(part, nn.Module) else [part])
    grouped = {id(p) for params in groups.values() for p in params}
    stray = [name for name, p in model.named_parameters() if id(p) not in grouped]
    if stray:
        raise ValueError(f"parameters of {type(model).__name__} in no group: {', '.join(stray)}")
    return _chunk_blocks(groups)


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final classification layer (fc, head or heads.head)."""
    return model.get_submodule(layout_of(model).head)


def _train_only(model: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """Make `params` trainable and every other parameter of the model frozen."""
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classifier for a fresh, trainable nn.Linear with num_classes outputs (same device and dtype).

    Returns the model.
    """
    old = classifier(model)
    parent, _, attr = layout_of(model).head.rpartition(".")
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    setattr(model.get_submodule(parent), attr, new)
    if hasattr(model, "num_classes"):  # torchvision and timm ViTs and rv ViTs record it
        model.num_classes = num_classes
    return model


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the classifier's (linear probing). Returns the model."""
    _train_only(model, classifier(model).parameters())
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable again. Returns the model."""
    return model.requires_grad_(True)


def unfreeze_last(model: nn.Module, k: int) -> nn.Module:
    """Staged unfreezing: train only the last k parameter groups (0 freezes everything). Returns the model."""
    groups = param_groups(model)
    if not 0 <= k <= len(groups):
        raise ValueError(f"stage {k} out of range: {type(model).__name__} has {len(groups)} groups (0..{len(groups)})")
    _train_only(model, (p for group in groups[len(groups) - k:] for p in group.params))
    return model


def train_mode(model: nn.Module) -> nn.Module:
    """Train mode for the modules that own trainable parameters, eval mode for the rest, so a frozen backbone's
    BatchNorm statistics and dropout stay as they are. Returns the model."""
    model.eval()
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            module.train()
    return model


@dataclass(frozen=True)
class Stage:
    """A run of epochs that trains the last `train_last` parameter groups (None: every group)."""

    epochs: int
    train_last: int | None = None


@dataclass(frozen=True)
class StageSchedule:
    """Which groups train in which epoch, and at which learning rate.

    The head group trains at the given learning rate, every backbone group at `backbone_lr_scale` times it: a
    pretrained backbone needs smaller steps than a fresh head. Groups are those of `param_groups`, so the same
    schedule unfreezes a ResNet layer by layer and a ViT by chunks of transformer blocks.
    """

    stages: tuple[Stage, ...]
    backbone_lr_scale: float = 0.1

    def __post_init__(self) -> None:
        if not self.stages or any(s.epochs < 1 or (s.train_last is not None and s.train_last < 1) for s in self.stages):
            raise ValueError(f"a schedule needs stages of >= 1 epoch training >= 1 group, got {self.stages}")

    @classmethod
    def staged(cls, epochs: int, backbone_lr_scale: float = 0.1) -> StageSchedule:
        """The tutorial's FineTuner: the head alone, then the head and the last backbone group (ResNet layer4, a
        ViT's last quarter of blocks), then everything; a quarter of the epochs each for the first two."""
        if epochs < 3:
            raise ValueError(f"staged fine-tuning needs >= 3 epochs (one per stage), got {epochs}")
        first = max(1, epochs // 4)
        return cls((Stage(first, 1), Stage(first, 2), Stage(epochs - 2 * first)), backbone_lr_scale)

    @property
    def epochs(self) -> int:
        """Total epochs over all stages."""
        return sum(s.epochs for s in self.stages)

    def stage_at(self, epoch: int) -> Stage:
        """The stage that epoch `epoch` (0-based) belongs to."""
        for stage in self.stages:
            if epoch < stage.epochs:
                return stage
            epoch -= stage.epochs
        raise ValueError(f"epoch out of range: the schedule has {self.epochs} epochs")

    def apply(self, model: nn.Module, epoch: int) -> nn.Module:
        """Freeze and unfreeze the model for `epoch` (`unfreeze_last`) and set its train/eval modes (`train_mode`)."""
        stage = self.stage_at(epoch)
        unfreeze_last(model, len(param_groups(model)) if stage.train_last is None else stage.train_last)
        return train_mode(model)

    def lr_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Optimizer parameter groups, one per group of `param_groups`: {"name", "params", "lr"}. Frozen parameters
        get no gradient, so an optimizer over all groups steps only the ones the current stage trains."""
        groups = param_groups(model)
        return [{"name": g.name, "params": list(g.params), "lr": lr if i == len(groups) - 1 else lr * self.backbone_lr_scale}
                for i, g in enumerate(groups)]


def count_trainable(model: nn.Module) -> int:
    """Number of parameter elements that require grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_transfer_model(
    arch: str, impl: str = "rv", *, num_classes: int, freeze_backbone: bool = True
) -> nn.Module:
    """Build `arch` from `impl`'s library (random init, ImageNet layout, through `Family.build`), give it a
    num_classes head and, by default, freeze everything but that head.
    """
    if arch not in library_archs(impl):
        raise ValueError(f"{impl} has no {arch!r}; valid: {', '.join(library_archs(impl))}")
    model = family_of(arch).build(arch, impl)
    replace_head(model, num_classes)
    if freeze_backbone:
        _train_only(model, classifier(model).parameters())
    return model
