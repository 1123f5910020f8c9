"""Parameters and FLOPs per image, from three counters side by side, and why they differ.

Conventions: a MAC is one multiply-accumulate; FLOPs = 2 x MACs. torchvision's published `_ops`
("GFLOPS" in its docs) are GMACs. The counters:
- analytic (`analytic_macs`): closed form from the architecture, by the MAC function of the family's
  spec (rv_models.family); the reference. It counts exactly what torchvision's published `_ops` and
  FlopCounterMode count: convolutions, linear layers (patch embedding and head included) and the
  two attention matmuls QK^T and AV; norms, activations, pools, softmax, residual adds and biases
  are not counted.
- flopcounter: torch.utils.flop_counter.FlopCounterMode on a model built on the meta device, so no
  real compute happens. On meta, scaled_dot_product_attention runs its math decomposition (two
  bmm) and nn.MultiheadAttention never takes its inference fast path (the fast path accepts only
  cpu/cuda tensors), so attention is counted for every impl. On a real CPU it would be missed.
  Its convolution backward is our own (`_conv_backward_flop`): torch counts a grouped convolution's
  weight gradient as if the convolution were dense, `groups` times too much (a ConvNeXt's
  depthwise convs made its train step 8.7x its forward instead of about 3x).
- fvcore: FlopCountAnalysis, reported as fvcore defines it (1 per multiply-add, norms and pools
  counted, no handler for attention kernels) on a real CPU forward (see bench.counting.fvcore_count).
analytic and flopcounter agree exactly; tests pin that and torchvision's published numbers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from bench.counting.fvcore_count import NOT_INSTALLED, fvcore_count, fvcore_installed, fvcore_note
from bench.errors import UsageError
from bench.models.groups import module_groups
from bench.models import ModelEntry, get_entry, list_archs, list_entries
from rv_models.registry import family_of

EXPECTED_COUNTS = Path(__file__).with_name("expected_counts.json")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; works on meta models."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def analytic_macs(arch: str, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """Closed-form MACs per image for a registered arch at a square input size, by canonical group
    (bench.models.groups), so the per-module breakdown of any implementation can be checked group by group."""
    if arch not in list_archs():
        raise UsageError(f"no analytic model for {arch!r}; valid: {', '.join(list_archs())}")
    return family_of(arch).analytic_macs(arch, image_size, num_classes)


def _meta_model(arch: str, impl: str, image_size: int) -> nn.Module:
    with torch.device("meta"):
        return get_entry(arch, impl).build(image_size=image_size)


# Counting runs a batch of 2 and divides: every counted op is linear in the batch, and batch-norm
# in train mode refuses a batch of 1 once the feature map is 1x1 (ResNets at 32 px and below).
_BATCH = 2


def _meta_input(image_size: int) -> torch.Tensor:
    return torch.empty(_BATCH, 3, image_size, image_size, device="meta")


def _conv_backward_flop(
    grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: object, _stride: object,
    _padding: object, _dilation: object, transposed: bool, _output_padding: object, _groups: int,
    output_mask: list[bool], out_shape: object = None, **_: object,
) -> int:
    """FLOPs of aten.convolution_backward: each gradient asked for (input, weight) costs what the forward does.

    Both are sums over the forward's own products (grad_input: grad_out times weight; grad_weight: grad_out
    times input), so each takes the forward's multiply-adds, grouped or not. torch's formula counts the weight
    gradient of a grouped convolution as dense, `groups` times too high.
    """
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (bool(output_mask[0]) + bool(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, silent, with the grouped-convolution backward counted right."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


class MetaCounts(NamedTuple):
    """What one meta-device build and training step of a model gives, per image."""

    params: int
    params_trainable: int
    flops: int  # forward FLOPs
    train_flops: int  # forward + backward FLOPs
    groups: tuple[tuple[str, int], ...]  # canonical group -> forward FLOPs, in forward order


@functools.lru_cache(maxsize=None)
def meta_counts(arch: str, impl: str, image_size: int) -> MetaCounts:
    """Parameters, forward FLOPs (total and by group) and training FLOPs from one meta step.

    The forward runs in train mode with autograd on: on meta that counts the same FLOPs as
    eval (dropout and batch-norm statistics are not counted; nn.MultiheadAttention never takes its
    fast path on meta), and one pass then serves both numbers.
    """
    model = _meta_model(arch, impl, image_size)
    flops, train, groups = _count_step(model, get_entry(arch, impl).family, impl, image_size, backward=True)
    return MetaCounts(*count_params(model), flops, train, tuple(groups.items()))


def forward_flops(arch: str, impl: str, image_size: int) -> int:
    """Forward FLOPs (2 per MAC) per image, counted by FlopCounterMode on the meta device."""
    return meta_counts(arch, impl, image_size).flops


def train_flops(arch: str, impl: str, image_size: int) -> int:
    """Forward + backward FLOPs per image of a full training step (optimizer excluded), on meta.

    Backward costs about twice the forward; the input needs no gradient, so the first conv's
    input-gradient is not computed (as in real training).
    """
    return meta_counts(arch, impl, image_size).train_flops


def module_flops(model: nn.Module, arch: str, impl: str, image_size: int) -> dict[str, int]:
    """Forward FLOPs per image for each canonical group (bench.models.groups), in forward order.

    A model with real weights is not run: its arch is counted on the meta device instead.
    """
    if next(model.parameters()).device.type != "meta":
        return dict(meta_counts(arch, impl, image_size).groups)
    return _count_step(model, get_entry(arch, impl).family, impl, image_size, backward=False)[2]


def _count_step(
    model: nn.Module, family: str, impl: str, image_size: int, backward: bool
) -> tuple[int, int, dict[str, int]]:
    """(forward, forward + backward, per-group forward) FLOPs of a meta model, in one pass.

    Attribution uses hooks around each group's modules: the FLOPs counted between a group's
    entry and exit belong to it, which is exact because groups are disjoint and run in sequence.
    Without `backward` the model runs in eval mode under no_grad and the second number is 0.
    """
    groups = module_groups(model, family, impl)
    result = dict.fromkeys(groups, 0)
    counter = flop_counter()
    handles = []
    for name, modules in groups.items():
        start: list[int] = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda *_, s=start: s.append(counter.get_total_flops())))
            handles.append(module.register_forward_hook(functools.partial(_add_since, result, name, start, counter)))
    was_training = model.training
    try:
        with torch.set_grad_enabled(backward), counter:
            out = model.train(backward)(_meta_input(image_size))
            forward = counter.get_total_flops()
            if backward:
                out.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    per_image = {name: flops // _BATCH for name, flops in result.items()}
    return forward // _BATCH, counter.get_total_flops() // _BATCH if backward else 0, per_image


def _add_since(result: dict[str, int], name: str, start: list[int], counter: FlopCounterMode, *_) -> None:
    result[name] += counter.get_total_flops() - start.pop()


@functools.lru_cache(maxsize=None)
def tv_published(arch: str, image_size: int) -> tuple[str, float] | None:
    """(weights name, published GMACs) of the torchvision weights for this arch at this input size.

    torchvision publishes `_ops` per weights enum member, each at its own evaluation size
    (ViT_H_14 SWAG E2E at 518 px, SWAG LINEAR at 224 px), so only a member whose crop size is
    `image_size` applies. The number describes the architecture, so it applies to every impl.
    """
    entry = next((e for e in list_entries(archs=[arch]) if e.tv_weights), None)
    if entry is None:
        return None
    import torchvision.models

    for weights in getattr(torchvision.models, entry.tv_weights):
        if weights.transforms().crop_size[0] == image_size:
            return f"{entry.tv_weights}.{weights.name}", float(weights.meta["_ops"])
    return None


def count(entry: ModelEntry, image_size: int | None = None, fvcore: bool = True) -> dict:
    """Everything `rvbench flops --json` reports for one entry at one input size.

    gmacs_* are per-image forward GMACs, gflops_* = 2 x GMACs except gflops_fvcore, which is
    fvcore's own total (1 per multiply-add) as it reports it; `modules` maps each canonical group
    to its forward GFLOPs. With fvcore=False the fvcore fields are None (its real forward is the
    slow part).
    """
    size = entry.image_size if image_size is None else image_size
    entry.check_image_size(size)
    meta = meta_counts(entry.arch, entry.impl, size)
    return {
        "arch": entry.arch,
        "impl": entry.impl,
        "family": entry.family,
        "image_size": size,
        "params": meta.params,
        "params_trainable": meta.params_trainable,
        "gmacs_flopcounter": meta.flops / 2e9,
        "gflops_flopcounter": meta.flops / 1e9,
        **other_counts(entry, size, fvcore),
        "train_gflops": meta.train_flops / 1e9,
        "modules": {name: flops / 1e9 for name, flops in meta.groups},
    }


def other_counts(entry: ModelEntry, image_size: int, fvcore: bool = True) -> dict:
    """What the other counters say of one entry's forward at one input size: the analytic formula,
    torchvision's published figure, fvcore (see `count`). Cheap but for fvcore: a run's report takes
    FlopCounter's figures from its rows, which the worker counted, and these beside them."""
    macs_analytic = sum(analytic_macs(entry.arch, image_size).values())
    published = tv_published(entry.arch, image_size)
    row = {
        "gmacs_analytic": macs_analytic / 1e9,
        "gflops_analytic": 2 * macs_analytic / 1e9,
        "gflops_fvcore": None,
        "fvcore_unsupported": None,
        "fvcore_uncalled": None,
        "fvcore_note": None,
        "tv_published_gmacs": published[1] if published else None,
        "tv_published_weights": published[0] if published else None,
    }
    if fvcore and not fvcore_installed():
        row["fvcore_note"] = NOT_INSTALLED
    elif fvcore:
        fv = fvcore_count(entry, image_size)
        row["gflops_fvcore"] = fv["total"] / 1e9
        row["fvcore_unsupported"] = fv["unsupported"]
        row["fvcore_uncalled"] = fv["uncalled"]
        row["fvcore_note"] = fvcore_note(fv, macs_analytic)
    return row


def expected_counts() -> dict[str, dict[str, int]]:
    """The deterministic counts pinned in bench/counting/expected_counts.json, for every registered entry."""
    out = {}
    for entry in list_entries():
        meta = meta_counts(entry.arch, entry.impl, entry.image_size)
        out[f"{entry.arch}/{entry.impl}"] = {
            "image_size": entry.image_size,
            "params": meta.params,
            "params_trainable": meta.params_trainable,
            "macs_analytic": sum(analytic_macs(entry.arch, entry.image_size).values()),
            "flops_flopcounter": meta.flops,
        }
    return out


def write_expected_counts(path: Path = EXPECTED_COUNTS) -> None:
    """Regenerate the expected-counts file after an intended change in a model's size."""
    path.write_text(json.dumps(expected_counts(), indent=1, sort_keys=True) + "\n")
