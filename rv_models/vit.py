"""Vision Transformer (Dosovitskiy et al. 2020): patch embedding, class token, pre-norm encoder blocks, linear head.

Module and parameter names match timm's VisionTransformer, so a timm state dict loads unchanged and a torchvision
one only needs its keys renamed (rv_models.convert, with the renames of the family's spec `FAMILY`, which closes the
module along with the configs, library names and layouts, optimizer and closed-form MACs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rv_models.family import BLOCKS, Family, Layout, Rename
from rv_models.init import deferred_init


@dataclass(frozen=True)
class ViTConfig:
    """Everything that defines a ViT's architecture and its regularisation."""

    img_size: int = 224  # square input side; the position embedding is learned for this patch grid
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0  # MLP hidden width relative to embed_dim
    drop_rate: float = 0.0  # dropout after the embeddings, after each attention/MLP projection and before the head
    drop_path_rate: float = 0.0  # stochastic depth of the last block; rises linearly from 0 at the first block


def _dropout(p: float) -> nn.Module:
    """Dropout, or a plain pass-through when it would never drop anything."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's whole residual branch with probability p, rescale the rest."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to embed_dim: one conv with stride = kernel."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H*W, C); for channels_last input both steps are views
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and PyTorch's fused attention kernel."""

    def __init__(self, dim: int, num_heads: int, drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = _dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # (B, N, 3C) -> 3 x (B, heads, N, head_dim) as strided views, no copy
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """Two linear layers with exact (erf) GELU in between."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = _dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def fit_pos_embed(model: VisionTransformer, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pretrained weights fitted to `model`'s patch grid: the position embedding resampled (`resize_pos_embed`)."""
    return {**state, "pos_embed": resize_pos_embed(state["pos_embed"], model.patch_embed.grid_size)}


def resize_pos_embed(pos_embed: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a (1, 1 + g*g, C) position embedding to a grid_size x grid_size patch grid.

    The class slot is kept as is; the patch grid is resampled bicubically, so weights learned at one image size
    can be used at another.
    """
    cls_slot, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patch slots, not a square grid")
    if old == grid_size:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim).to(pos_embed.dtype)
    return torch.cat((cls_slot, grid), dim=1)


class VisionTransformer(nn.Module):
    """Patch embedding + class token + learned position embedding, `depth` blocks, final norm, class-token head."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_classes = config.num_classes
        with deferred_init(self):  # the layers' default init would be overwritten: _init_weights is the only one
            self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
            self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.empty(1, 1 + self.patch_embed.num_patches, dim))
            self.pos_drop = _dropout(config.drop_rate)
            rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
            self.blocks = nn.Sequential(
                *(Block(dim, config.num_heads, config.mlp_ratio, config.drop_rate, rate) for rate in rates)
            )
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head_drop = _dropout(config.drop_rate)
            self.head = nn.Linear(dim, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Set every parameter (the layers come uninitialised, see rv_models.init), as timm does."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()  # the patch conv and the norms keep PyTorch's default

    def get_num_params(self) -> int:
        """Number of parameters, position embedding included."""
        return sum(p.numel() for p in self.parameters())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, 1 + patches, C), class token first."""
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)[:, 0]))


# arch -> architecture; the other ViTConfig fields are per-model options (see create)
CONFIGS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": ViTConfig(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch32_224": ViTConfig(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_large_patch32_224": ViTConfig(patch_size=32, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14_224": ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}
_ARCH_FIELDS = ("patch_size", "embed_dim", "depth", "num_heads")  # the ViTConfig fields an arch name fixes


def create(arch: str, **kwargs: Any) -> VisionTransformer:
    """Build the ViT `arch` (a CONFIGS name) with random weights.

    kwargs: any ViTConfig field but the four that define the arch (img_size, in_chans, num_classes, mlp_ratio,
    drop_rate, drop_path_rate).
    """
    fixed = [name for name in _ARCH_FIELDS if name in kwargs]
    if fixed:
        raise TypeError(f"{arch} fixes {', '.join(fixed)}; it cannot be passed")
    return VisionTransformer(replace(CONFIGS[arch], **kwargs))


def vit_tiny_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16: width 192, 12 blocks, 3 heads. kwargs: the options of `create`."""
    return create("vit_tiny_patch16_224", **kwargs)


def vit_small_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16: width 384, 12 blocks, 6 heads."""
    return create("vit_small_patch16_224", **kwargs)


def vit_base_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (torchvision vit_b_16): width 768, 12 blocks, 12 heads."""
    return create("vit_base_patch16_224", **kwargs)


def vit_base_patch32_224(**kwargs: Any) -> VisionTransformer:
    """ViT-B/32 (torchvision vit_b_32): width 768, 12 blocks, 12 heads."""
    return create("vit_base_patch32_224", **kwargs)


def vit_large_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (torchvision vit_l_16): width 1024, 24 blocks, 16 heads."""
    return create("vit_large_patch16_224", **kwargs)


def vit_large_patch32_224(**kwargs: Any) -> VisionTransformer:
    """ViT-L/32 (torchvision vit_l_32): width 1024, 24 blocks, 16 heads."""
    return create("vit_large_patch32_224", **kwargs)


def vit_huge_patch14_224(**kwargs: Any) -> VisionTransformer:
    """ViT-H/14 (torchvision vit_h_14): width 1280, 32 blocks, 16 heads, MLP 5120."""
    return create("vit_huge_patch14_224", **kwargs)


def vit_tokens(config: ViTConfig, image_size: int) -> int:
    """Sequence length: one token per whole patch plus the class token."""
    return (image_size // config.patch_size) ** 2 + 1


def vit_attention_macs(config: ViTConfig, image_size: int) -> int:
    """MACs of QK^T and AV in one block (they do not depend on the head count)."""
    n = vit_tokens(config, image_size)
    return 2 * n * n * config.embed_dim


def vit_projection_macs(config: ViTConfig, image_size: int) -> int:
    """MACs of the fused qkv and the output projection of one block's attention."""
    return vit_tokens(config, image_size) * 4 * config.embed_dim * config.embed_dim


def vit_macs(config: ViTConfig, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image by group: patch_embed, blocks.0..blocks.N-1, head (class-token pooling).

    Counts the patch conv, the linears and the attention matmuls; norms, softmax and adds are free.
    """
    n = vit_tokens(config, image_size)
    d = config.embed_dim
    groups = {"patch_embed": (n - 1) * d * config.in_chans * config.patch_size**2}
    mlp = 2 * n * d * int(d * config.mlp_ratio)  # the hidden width as Block builds it
    block = vit_projection_macs(config, image_size) + vit_attention_macs(config, image_size) + mlp
    for i in range(config.depth):
        groups[f"blocks.{i}"] = block
    groups["head"] = d * num_classes
    return groups


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The usual ViT optimizer: AdamW (the values only need to move the weights in a benchmark)."""
    # AdamW's default eps (1e-8) is 0 in fp16, which turns fp16-cast weights into inf/NaN.
    eps = 1e-4 if params and params[0].dtype == torch.float16 else 1e-8
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, eps=eps)


# rv uses timm's names; patch_drop, norm_pre and fc_norm exist in timm only (identities for these archs).
_TIMM_LAYOUT = Layout(
    {
        "cls_token": "patch_embed", "pos_embed": "patch_embed",
        "patch_embed": "patch_embed", "pos_drop": "patch_embed", "patch_drop": "patch_embed", "norm_pre": "patch_embed",
        "blocks": BLOCKS,
        "norm": "head", "fc_norm": "head", "head_drop": "head", "head": "head",
    },
    head="head",
    body="blocks",
)  # fmt: skip
_TORCHVISION_LAYOUT = Layout(
    {
        "class_token": "patch_embed", "encoder.pos_embedding": "patch_embed",
        "conv_proj": "patch_embed", "encoder.dropout": "patch_embed",
        "encoder.layers": BLOCKS,
        "encoder.ln": "head", "heads": "head",
    },
    head="heads.head",
    body="encoder.layers",
)  # fmt: skip

FAMILY = Family(
    name="vit",
    title="ViT",
    configs=CONFIGS,
    create=create,
    layouts={"rv": _TIMM_LAYOUT, "torchvision": _TORCHVISION_LAYOUT, "timm": _TIMM_LAYOUT},
    torchvision={  # torchvision has no ViT-Tiny or ViT-Small
        "vit_base_patch16_224": ("vit_b_16", "ViT_B_16_Weights"),
        "vit_base_patch32_224": ("vit_b_32", "ViT_B_32_Weights"),
        "vit_large_patch16_224": ("vit_l_16", "ViT_L_16_Weights"),
        "vit_large_patch32_224": ("vit_l_32", "ViT_L_32_Weights"),
        "vit_huge_patch14_224": ("vit_h_14", "ViT_H_14_Weights"),
    },
    renames={  # torchvision's packed in_proj_weight stacks q, k, v exactly like rv's fused qkv
        "torchvision": tuple(Rename(pattern, name) for pattern, name in (
            (r"^cls_token$", "class_token"),
            (r"^pos_embed$", "encoder.pos_embedding"),
            (r"^patch_embed\.proj\.", "conv_proj."),
            (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.encoder_layer_\1.ln_1."),
            (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.encoder_layer_\1.ln_2."),
            (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$",
             r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
            (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
            (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
            (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
            (r"^norm\.", "encoder.ln."),
            (r"^head\.", "heads.head."),
        )),
    },
    optimizer=adamw,
    input_multiple=attrgetter("patch_size"),  # whole patches only (torchvision refuses anything else)
    min_image_size=attrgetter("patch_size"),  # one patch at least
    takes_image_size=True,  # the position embedding is sized for one patch grid
    macs=vit_macs,
    fit_weights=fit_pos_embed,
)
