"""ResNet-18/34/50/101/152 (He et al. 2015), v1.5 variant: the stride of a bottleneck sits on its 3x3 conv.

Module and parameter names match torchvision's ResNet, so a torchvision or timm state dict loads unchanged.
Every layer keeps the input's memory format, so the model runs channels_last without layout copies.
The family's spec (`FAMILY`: configs, library names and layouts, optimizer, closed-form MACs) closes the module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from rv_models.family import LIBRARIES, Family, Layout
from rv_models.init import deferred_init


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        """The norm closing the residual branch; zeroing its scale makes the block start as identity."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        """The norm closing the residual branch; zeroing its scale makes the block start as identity."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


BlockType = type[BasicBlock] | type[Bottleneck]


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a ResNet's architecture."""

    block: BlockType
    layers: tuple[int, int, int, int]  # blocks per stage
    num_classes: int = 1000
    in_chans: int = 3
    zero_init_residual: bool = False  # start every residual branch as identity; helps large-batch training


class ResNet(nn.Module):
    """7x7 stem, max pool, four residual stages (widths 64..512 times the block expansion), average pool, fc."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        with deferred_init(self):  # the layers' default init would be overwritten: _init_weights is the only one
            self.conv1 = nn.Conv2d(config.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self._in_planes = 64
            self.layer1 = self._make_layer(config.block, 64, config.layers[0], stride=1)
            self.layer2 = self._make_layer(config.block, 128, config.layers[1], stride=2)
            self.layer3 = self._make_layer(config.block, 256, config.layers[2], stride=2)
            self.layer4 = self._make_layer(config.block, 512, config.layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512 * config.block.expansion, config.num_classes)
        self._init_weights(config.zero_init_residual)

    def _make_layer(self, block: BlockType, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage; its first block changes resolution/width, with a 1x1 conv shortcut when the shape changes."""
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._in_planes != out_planes:
            downsample = nn.Sequential(_conv1x1(self._in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        layers = [block(self._in_planes, planes, stride, downsample)]
        self._in_planes = out_planes
        layers += [block(out_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Set every parameter and buffer (the layers come uninitialised, see rv_models.init), as torchvision does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()  # BN: scale 1, shift 0, fresh running stats; fc: PyTorch's default
        if zero_init_residual:  # after the loop above, which would reset these norms to ones
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def get_num_params(self) -> int:
        """Number of parameters (buffers such as BN running stats excluded)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# arch -> architecture; the other ResNetConfig fields are per-model options (see create)
CONFIGS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig(BasicBlock, (2, 2, 2, 2)),
    "resnet34": ResNetConfig(BasicBlock, (3, 4, 6, 3)),
    "resnet50": ResNetConfig(Bottleneck, (3, 4, 6, 3)),
    "resnet101": ResNetConfig(Bottleneck, (3, 4, 23, 3)),
    "resnet152": ResNetConfig(Bottleneck, (3, 8, 36, 3)),
}


def create(arch: str, *, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """Build the ResNet `arch` (a CONFIGS name) with random weights and these options."""
    options = {"num_classes": num_classes, "in_chans": in_chans, "zero_init_residual": zero_init_residual}
    return ResNet(replace(CONFIGS[arch], **options))


def resnet18(*, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 11.7M parameters."""
    return create("resnet18", num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def resnet34(*, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3), 21.8M parameters."""
    return create("resnet34", num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def resnet50(*, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), 25.6M parameters."""
    return create("resnet50", num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def resnet101(*, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3), 44.5M parameters."""
    return create("resnet101", num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def resnet152(*, num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-152: bottleneck blocks (3, 8, 36, 3), 60.2M parameters."""
    return create("resnet152", num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv_macs(size: int, c_in: int, c_out: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(MACs, output side) of a square convolution on a square input."""
    out = _out(size, kernel, stride, pad)
    return out * out * c_out * c_in * kernel * kernel, out


def resnet_macs(config: ResNetConfig, image_size: int, num_classes: int = 1000) -> dict[str, int]:
    """MACs per image by group: stem, layer1..layer4, head (convs and the fc; norms, pools and adds are free).

    Mirrors ResNet.__init__: the stride of a stage's first block sits on its 3x3 conv (v1.5).
    """
    groups: dict[str, int] = {}
    groups["stem"], size = _conv_macs(image_size, config.in_chans, 64, 7, 2, 3)
    size = _out(size, 3, 2, 1)  # max pool
    bottleneck = config.block is Bottleneck
    in_ch = 64
    for stage, depth in enumerate(config.layers):
        planes = 64 * 2**stage
        out_ch = planes * config.block.expansion
        total = 0
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            if bottleneck:
                a, _ = _conv_macs(size, in_ch, planes, 1, 1, 0)
                b, new_size = _conv_macs(size, planes, planes, 3, stride, 1)
                c, _ = _conv_macs(new_size, planes, out_ch, 1, 1, 0)
                total += a + b + c
            else:
                a, new_size = _conv_macs(size, in_ch, planes, 3, stride, 1)
                b, _ = _conv_macs(new_size, planes, planes, 3, 1, 1)
                total += a + b
            if stride != 1 or in_ch != out_ch:
                total += _conv_macs(size, in_ch, out_ch, 1, stride, 0)[0]
            in_ch, size = out_ch, new_size
        groups[f"layer{stage + 1}"] = total
    groups["head"] = in_ch * num_classes
    return groups


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The usual ResNet optimizer: SGD with momentum (the values only need to move the weights in a benchmark)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


# rv and torchvision name everything alike; timm calls the stem activation act1 and the pool global_pool.
_LAYOUT = Layout(
    {
        "conv1": "stem", "bn1": "stem", "relu": "stem", "act1": "stem", "maxpool": "stem",
        "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4",
        "avgpool": "head", "global_pool": "head", "fc": "head",
    },
    head="fc",
    body="layer4",
)  # fmt: skip

FAMILY = Family(
    name="resnet",
    title="ResNet",
    configs=CONFIGS,
    create=create,
    layouts=dict.fromkeys(LIBRARIES, _LAYOUT),
    torchvision={
        "resnet18": ("resnet18", "ResNet18_Weights"),
        "resnet34": ("resnet34", "ResNet34_Weights"),
        "resnet50": ("resnet50", "ResNet50_Weights"),
        "resnet101": ("resnet101", "ResNet101_Weights"),
        "resnet152": ("resnet152", "ResNet152_Weights"),
    },
    optimizer=sgd,
    input_multiple=lambda config: 1,  # any side works: convs and the adaptive pool take any input
    min_image_size=lambda config: 16,  # runs on any side; below 16 px most stages only downsample padding
    takes_image_size=False,
    macs=resnet_macs,
)
