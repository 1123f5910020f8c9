"""Closed-form multiply-accumulate counts from the architecture definitions.

This is the reference the measured counters are checked against. It counts exactly what
torchvision's published `_ops` count and FlopCounterMode counts: convolutions, linear layers
(patch embedding and head included) and the two attention matmuls QK^T and AV. Norms,
activations, pools, softmax and residual adds are not counted. Biases are not counted.
Results are per image and split into the canonical groups of `bench.models.groups`, so the per-module
breakdown of any implementation can be checked group by group.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UsageError


@dataclass(frozen=True)
class ResNetConfig:
    bottleneck: bool  # Bottleneck (1x1-3x3-1x1, expansion 4) or BasicBlock (3x3-3x3)
    depths: tuple[int, int, int, int]  # blocks per stage


@dataclass(frozen=True)
class ViTConfig:
    patch: int  # patch side in pixels
    dim: int  # embedding width D
    depth: int  # number of transformer blocks
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * D


RESNETS = {
    "resnet18": ResNetConfig(False, (2, 2, 2, 2)),
    "resnet34": ResNetConfig(False, (3, 4, 6, 3)),
    "resnet50": ResNetConfig(True, (3, 4, 6, 3)),
    "resnet101": ResNetConfig(True, (3, 4, 23, 3)),
    "resnet152": ResNetConfig(True, (3, 8, 36, 3)),
}

VITS = {
    "vit_tiny_patch16_224": ViTConfig(16, 192, 12),
    "vit_small_patch16_224": ViTConfig(16, 384, 12),
    "vit_base_patch16_224": ViTConfig(16, 768, 12),
    "vit_base_patch32_224": ViTConfig(32, 768, 12),
    "vit_large_patch16_224": ViTConfig(16, 1024, 24),
    "vit_large_patch32_224": ViTConfig(32, 1024, 24),
    "vit_huge_patch14_224": ViTConfig(14, 1280, 32),
}


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv(size: int, c_in: int, c_out: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(MACs, output side) of a square convolution on a square input."""
    out = _out(size, kernel, stride, pad)
    return out * out * c_out * c_in * kernel * kernel, out


def resnet_macs(cfg: ResNetConfig, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image by group: stem, layer1..layer4, head (ResNet v1.5: stride on the 3x3)."""
    groups: dict[str, int] = {}
    groups["stem"], size = _conv(image_size, 3, 64, 7, 2, 3)
    size = _out(size, 3, 2, 1)  # max pool
    expansion = 4 if cfg.bottleneck else 1
    in_ch = 64
    for stage, depth in enumerate(cfg.depths):
        planes = 64 * 2**stage
        total = 0
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            out_ch = planes * expansion
            if cfg.bottleneck:
                a, _ = _conv(size, in_ch, planes, 1, 1, 0)
                b, new_size = _conv(size, planes, planes, 3, stride, 1)
                c, _ = _conv(new_size, planes, out_ch, 1, 1, 0)
                total += a + b + c
            else:
                a, new_size = _conv(size, in_ch, planes, 3, stride, 1)
                b, _ = _conv(new_size, planes, planes, 3, 1, 1)
                total += a + b
            if stride != 1 or in_ch != out_ch:
                total += _conv(size, in_ch, out_ch, 1, stride, 0)[0]
            in_ch, size = out_ch, new_size
        groups[f"layer{stage + 1}"] = total
    groups["head"] = in_ch * num_classes
    return groups


def vit_tokens(cfg: ViTConfig, image_size: int) -> int:
    """Sequence length: one token per whole patch plus the class token."""
    return (image_size // cfg.patch) ** 2 + 1


def vit_attention_macs(cfg: ViTConfig, image_size: int) -> int:
    """MACs of QK^T and AV in one block (they do not depend on the head count)."""
    n = vit_tokens(cfg, image_size)
    return 2 * n * n * cfg.dim


def vit_projection_macs(cfg: ViTConfig, image_size: int) -> int:
    """MACs of the fused qkv and the output projection of one block's attention."""
    return vit_tokens(cfg, image_size) * 4 * cfg.dim * cfg.dim


def vit_macs(cfg: ViTConfig, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image by group: patch_embed, blocks.0..blocks.N-1, head (class-token pooling)."""
    n = vit_tokens(cfg, image_size)
    d = cfg.dim
    groups = {"patch_embed": (n - 1) * d * 3 * cfg.patch * cfg.patch}
    mlp = 2 * n * d * cfg.mlp_ratio * d
    block = vit_projection_macs(cfg, image_size) + vit_attention_macs(cfg, image_size) + mlp
    for i in range(cfg.depth):
        groups[f"blocks.{i}"] = block
    groups["head"] = d * num_classes
    return groups


def analytic_macs(arch: str, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image for a registered arch at a square input size, by canonical group."""
    if arch in RESNETS:
        return resnet_macs(RESNETS[arch], image_size, num_classes)
    if arch in VITS:
        return vit_macs(VITS[arch], image_size, num_classes)
    raise UsageError(f"no analytic model for {arch!r}; valid: {', '.join([*RESNETS, *VITS])}")
