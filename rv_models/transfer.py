"""Transfer learning helpers: swap the classifier, freeze the backbone, unfreeze it group by group.

They work on the ResNets and ViTs of rv_models, torchvision and timm alike, because the harness fine-tunes all
three. Parameter groups run from input to output:
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
from rv_models.registry import create_model

BLOCK_GROUPS = 4  # ViT blocks unfreeze in this many chunks, mirroring ResNet's four stages


@dataclass(frozen=True)
class ParamGroup:
    """Consecutive parameters that are frozen and unfrozen together."""

    name: str
    params: tuple[nn.Parameter, ...]


@dataclass(frozen=True)
class _Layout:
    """Where a model family keeps its classifier and which parameter-name prefixes form each group."""

    head: str  # dotted path of the classifier nn.Linear
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group name, parameter-name prefixes), input to output


def _vit_layout(embed: tuple[str, ...], block: str, depth: int, top: tuple[str, ...],
                head: str) -> _Layout:
    """ViT groups; `block` formats a block index into that block's parameter-name prefix."""
    groups = [("patch_embed", embed)]
    for g in range(BLOCK_GROUPS):
        first, end = g * depth // BLOCK_GROUPS, (g + 1) * depth // BLOCK_GROUPS
        if end > first:
            groups.append((f"blocks.{first}-{end - 1}", tuple(block.format(i) for i in range(first, end))))
    groups.append(("head", top))
    return _Layout(head, tuple(groups))


def _layout(model: nn.Module) -> _Layout:
    """Recognise rv / torchvision / timm ResNets and ViTs by their module names."""
    if hasattr(model, "layer4") and hasattr(model, "fc"):
        stages = tuple((f"layer{i}", (f"layer{i}",)) for i in range(1, 5))
        return _Layout("fc", (("stem", ("conv1", "bn1")), *stages, ("head", ("fc",))))
    if hasattr(model, "patch_embed") and hasattr(model, "blocks"):  # rv and timm
        return _vit_layout(("patch_embed", "cls_token", "pos_embed"), "blocks.{}", len(model.blocks),
                           ("norm", "fc_norm", "head"), "head")
    if hasattr(model, "conv_proj") and hasattr(model, "encoder"):  # torchvision
        return _vit_layout(("conv_proj", "class_token", "encoder.pos_embedding"),
                           "encoder.layers.encoder_layer_{}", len(model.encoder.layers), ("encoder.ln", "heads"),
                           "heads.head")
    raise ValueError(
        f"unsupported model {type(model).__name__}: expected a ResNet or ViT from rv_models, torchvision or timm"
    )


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def param_groups(model: nn.Module) -> list[ParamGroup]:
    """The model's parameters split into unfreezing groups, input to output (see the module docstring)."""
    layout = _layout(model)
    named = list(model.named_parameters())
    groups = [
        ParamGroup(group, tuple(p for name, p in named if _matches(name, prefixes)))
        for group, prefixes in layout.groups
    ]
    grouped = {id(p) for group in groups for p in group.params}
    stray = [name for name, p in named if id(p) not in grouped]
    if stray:
        raise ValueError(f"parameters of {type(model).__name__} in no group: {', '.join(stray)}")
    return groups


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final classification layer (fc, head or heads.head)."""
    return model.get_submodule(_layout(model).head)


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
    parent, _, attr = _layout(model).head.rpartition(".")
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
