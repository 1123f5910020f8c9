"""rvbench: honest benchmarks of ResNet and Vision Transformer implementations in PyTorch."""

__version__ = "0.1.0"
