"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"): patchify stem, four stages of depthwise 7x7 + MLP blocks.

Module and parameter names match timm's ConvNeXt, so a timm state dict loads unchanged and a torchvision one only
needs its keys renamed and its layer scales reshaped (rv_models.convert, with the rules of the family's spec
`FAMILY`, which closes the module along with the configs, library names, builder options and layouts, optimizer,
smallest input and closed-form MACs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from rv_models.family import Family, Layout, Rename
from rv_models.init import deferred_init
from rv_models.vit import Mlp, adamw

STEM_STRIDE = 4  # the stem cuts the image into 4x4 patches
STAGE_STRIDE = 2  # each stage after the first starts by halving the map


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Everything that defines a ConvNeXt's architecture."""

    depths: tuple[int, int, int, int]  # blocks per stage
    dims: tuple[int, int, int, int] = (96, 192, 384, 768)  # channels per stage
    num_classes: int = 1000
    in_chans: int = 3
    layer_scale_init: float = 1e-6  # initial value of every block's per-channel output scale (gamma)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (the stem, the downsampling layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, MLP (4x, GELU) on channels-last tokens, per-channel scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.empty(dim))  # layer scale: the branch starts near zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + out * self.gamma.reshape(1, -1, 1, 1)


class Stage(nn.Module):
    """A downsampling layer (LayerNorm, 2x2 conv with stride 2; none in the first stage), then the blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = (
            nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, STAGE_STRIDE, stride=STAGE_STRIDE))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*(Block(dim) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pool, LayerNorm, classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean((2, 3))))


class ConvNeXt(nn.Module):
    """4x4 patchify stem with LayerNorm, four stages (widths `dims`, each after the first at half the side), head."""

    def __init__(self, config: ConvNeXtConfig) -> None:
        super().__init__()
        dims = config.dims
        with deferred_init(self):  # the layers' default init would be overwritten: _init_weights is the only one
            self.stem = nn.Sequential(
                nn.Conv2d(config.in_chans, dims[0], STEM_STRIDE, stride=STEM_STRIDE), LayerNorm2d(dims[0], eps=1e-6)
            )
            self.stages = nn.Sequential(
                *(Stage(dims[max(i - 1, 0)], dims[i], depth, i > 0) for i, depth in enumerate(config.depths))
            )
            self.head = Head(dims[-1], config.num_classes)
        self._init_weights(config.layer_scale_init)

    def _init_weights(self, layer_scale_init: float) -> None:
        """Set every parameter (the layers come uninitialised, see rv_models.init), as timm and torchvision do."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
            elif isinstance(m, Block):
                nn.init.constant_(m.gamma, layer_scale_init)

    def get_num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# arch -> architecture; the other ConvNeXtConfig fields are per-model options (see create)
CONFIGS: dict[str, ConvNeXtConfig] = {
    "convnext_tiny": ConvNeXtConfig(depths=(3, 3, 9, 3)),
    "convnext_small": ConvNeXtConfig(depths=(3, 3, 27, 3)),
}


def create(arch: str, *, num_classes: int = 1000, in_chans: int = 3) -> ConvNeXt:
    """Build the ConvNeXt `arch` (a CONFIGS name) with random weights and these options."""
    return ConvNeXt(replace(CONFIGS[arch], num_classes=num_classes, in_chans=in_chans))


def convnext_tiny(*, num_classes: int = 1000, in_chans: int = 3) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), widths 96..768, 28.6M parameters."""
    return create("convnext_tiny", num_classes=num_classes, in_chans=in_chans)


def convnext_small(*, num_classes: int = 1000, in_chans: int = 3) -> ConvNeXt:
    """ConvNeXt-S: depths (3, 3, 27, 3), widths 96..768, 50.2M parameters."""
    return create("convnext_small", num_classes=num_classes, in_chans=in_chans)


def convnext_macs(config: ConvNeXtConfig, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image by group: stem, stage1..stage4 (each with its downsampling conv), head.

    Counts the convs and linears (a block: depthwise 7x7, then 4x and back); norms, GELU, layer scale, the pool and
    adds are free. Strided convs without padding floor the side, as ConvNeXt.__init__ builds them.
    """
    size = image_size // STEM_STRIDE
    groups = {"stem": size * size * config.dims[0] * config.in_chans * STEM_STRIDE**2}
    in_dim = config.dims[0]
    for stage, (depth, dim) in enumerate(zip(config.depths, config.dims)):
        total = 0
        if stage > 0:
            size //= STAGE_STRIDE
            total += size * size * dim * in_dim * STAGE_STRIDE**2
        total += depth * size * size * dim * (7 * 7 + 2 * 4 * dim)
        groups[f"stage{stage + 1}"] = total
        in_dim = dim
    groups["head"] = in_dim * num_classes
    return groups


def _torchvision_block(match: re.Match[str]) -> str:
    """torchvision keeps stage i's blocks at features.{2i+1} (the downsampling layers sit at the even indices)."""
    return f"features.{2 * int(match[1]) + 1}.{match[2]}."


# rv uses timm's names; timm also has norm_pre (an identity for these archs) before its head.
_TIMM_LAYOUT = Layout(
    {
        "stem": "stem",
        "stages.0": "stage1", "stages.1": "stage2", "stages.2": "stage3", "stages.3": "stage4",
        "norm_pre": "head", "head": "head",
    },
    head="head.fc",
    body="stages",
)  # fmt: skip
# torchvision: features.0 is the stem, then per stage its downsampling layer (even index) and blocks (odd index).
_TORCHVISION_LAYOUT = Layout(
    {
        "features.0": "stem",
        "features.1": "stage1", "features.2": "stage2", "features.3": "stage2", "features.4": "stage3",
        "features.5": "stage3", "features.6": "stage4", "features.7": "stage4",
        "avgpool": "head", "classifier": "head",
    },
    head="classifier.2",
    body="features",
)  # fmt: skip

FAMILY = Family(
    name="convnext",
    title="ConvNeXt",
    configs=CONFIGS,
    create=create,
    layouts={"rv": _TIMM_LAYOUT, "torchvision": _TORCHVISION_LAYOUT, "timm": _TIMM_LAYOUT},
    torchvision={
        "convnext_tiny": ("convnext_tiny", "ConvNeXt_Tiny_Weights"),
        "convnext_small": ("convnext_small", "ConvNeXt_Small_Weights"),
    },
    renames={
        "torchvision": (
            Rename(r"^stem\.", "features.0."),
            Rename(r"^stages\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m[1])}."),
            Rename(r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", lambda m: _torchvision_block(m) + "layer_scale",
                   shape=lambda rv: (*rv, 1, 1)),  # torchvision's layer scale is (C, 1, 1)
            Rename(r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", lambda m: _torchvision_block(m) + "block.0."),
            Rename(r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", lambda m: _torchvision_block(m) + "block.2."),
            Rename(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", lambda m: _torchvision_block(m) + "block.3."),
            Rename(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", lambda m: _torchvision_block(m) + "block.5."),
            Rename(r"^head\.norm\.", "classifier.0."),
            Rename(r"^head\.fc\.", "classifier.2."),
        ),
    },
    # both libraries train with stochastic depth; torchvision's builders turn it on by default (0.1 for tiny)
    options={"torchvision": {"stochastic_depth_prob": 0.0}, "timm": {"drop_path_rate": 0.0}},
    optimizer=adamw,  # ConvNeXt trains with AdamW, like a ViT
    input_multiple=lambda config: 1,  # strided convs floor any side
    min_image_size=lambda config: STEM_STRIDE * STAGE_STRIDE**3,  # the last downsampling needs a 2x2 map: 32 px
    takes_image_size=False,
    macs=convnext_macs,
)
