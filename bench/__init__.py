"""rvbench: honest benchmarks of ResNet, Vision Transformer and ConvNeXt implementations in PyTorch."""

__version__ = "0.1.0"
