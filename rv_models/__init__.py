"""rvbench's reference implementations of the registered families (registry.FAMILIES), weight-compatible with
torchvision and timm."""

from rv_models.convert import convert_state_dict
from rv_models.convnext import ConvNeXt, ConvNeXtConfig
from rv_models.pretrained import load_pretrained
from rv_models.registry import create_model, list_models
from rv_models.resnet import ResNet, ResNetConfig
from rv_models.vit import ViTConfig, VisionTransformer, resize_pos_embed

__all__ = [
    "ConvNeXt",
    "ConvNeXtConfig",
    "ResNet",
    "ResNetConfig",
    "ViTConfig",
    "VisionTransformer",
    "convert_state_dict",
    "create_model",
    "list_models",
    "load_pretrained",
    "resize_pos_embed",
]
