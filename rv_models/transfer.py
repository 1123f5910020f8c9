"""Transfer learning helpers: swap the classifier, freeze the backbone, unfreeze it group by group.

They work on the ResNets and ViTs of rv_models, torchvision and timm alike, because the harness fine-tunes all
three. Parameter groups are the canonical groups of the family's layout (rv_models.family), input to output:
    ResNet: stem (conv1, bn1), layer1, layer2, layer3, layer4, head (fc)
    ViT:    patch_embed (patch projection, class token, position embedding), the blocks in BLOCK_GROUPS
            consecutive chunks ("blocks.0-2", ...), head (final norm and classifier)
Stage k trains the last k groups, so stage 1 trains the head group and stage len(groups) trains everything.
Freezing only switches requires_grad; BatchNorm running statistics still update in train mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from rv_models.convert import TORCHVISION_NAMES, library_archs
from rv_models.family import BLOCKS
from rv_models.registry import create_model, layout_of

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


def count_trainable(model: nn.Module) -> int:
    """Number of parameter elements that require grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_transfer_model(
    arch: str, impl: str = "rv", *, num_classes: int, freeze_backbone: bool = True
) -> nn.Module:
    """Build `arch` from `impl`'s library (random init, ImageNet layout), give it a num_classes head and,
    by default, freeze everything but that head.
    """
    if arch not in library_archs(impl):
        raise ValueError(f"{impl} has no {arch!r}; valid: {', '.join(library_archs(impl))}")
    if impl == "rv":
        model = create_model(arch)
    elif impl == "torchvision":
        import torchvision

        model = torchvision.models.get_model(TORCHVISION_NAMES[arch])
    else:
        import timm

        model = timm.create_model(arch, num_classes=1000)
    replace_head(model, num_classes)
    if freeze_backbone:
        _train_only(model, classifier(model).parameters())
    return model
