"""A procedural 10-class image set for the transfer tests and `make transfer-demo`: no download, any size, seeded.

Six classes are sinusoidal gratings at 0, 30, ..., 150 degrees (random phase and colours), four are shapes
(disk, square, triangle, ring) of random size and colour near the centre; foreground and background colours are
at a fixed contrast; every image gets Gaussian noise. The
classes are easy for a small CNN, so a few epochs tell a working training loop from a broken one, and hard enough
that chance (10%) is far below what it reaches.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.data.datasets import write_cifar_batches, write_image_folder

SIDE = 32
ORIENTATIONS = tuple(range(0, 180, 30))
SHAPES = ("disk", "square", "triangle", "ring")
# Numbered so that an ImageFolder reader, which sorts the folder names, numbers them as the CIFAR batches do.
CLASSES = tuple(f"{i}-{name}" for i, name in enumerate([f"grating{a:03d}" for a in ORIENTATIONS] + list(SHAPES)))
NOISE = 0.1
PERIOD = 16  # px per grating cycle: coarse enough to survive a ResNet stem's 4x downsampling


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Where the shape of radius r centred at the origin covers the pixels at offsets (u, v)."""
    if shape == "disk":
        return u**2 + v**2 <= r**2
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= r * 0.8
    if shape == "triangle":
        return (v <= r * 0.6) & (v >= 2 * u.abs() - r)
    return ((u**2 + v**2).sqrt() - r * 0.8).abs() <= r * 0.25


def make_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8 n x 3 x 32 x 32) and their labels, classes in turn (balanced), drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    coords = torch.arange(SIDE, dtype=torch.float32) - (SIDE - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(n, 3, SIDE, SIDE)
    for i, label in enumerate(labels.tolist()):
        bg = 0.5 * torch.rand(3, 1, 1, generator=g)
        fg = bg + 0.5  # always brighter than the background: high contrast of one sign
        if label < len(ORIENTATIONS):
            angle = math.radians(ORIENTATIONS[label]) + (torch.rand(1, generator=g).item() - 0.5) * 0.2
            phase = 2 * math.pi * torch.rand(1, generator=g).item()
            wave = 0.5 + 0.5 * torch.sin(2 * math.pi / PERIOD * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        else:
            centre = (torch.rand(2, generator=g) - 0.5) * SIDE * 0.2
            radius = SIDE * (0.35 + 0.1 * torch.rand(1, generator=g))
            wave = _shape_mask(SHAPES[label - len(ORIENTATIONS)], xx - centre[0], yy - centre[1], radius).float()
        images[i] = bg + (fg - bg) * wave
    images += NOISE * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def write_demo_data(root: Path, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> tuple[Path, Path]:
    """Write one procedural set both ways under `root`: root/imagefolder (train and test images together; the
    reader splits it) and root/cifar-10-batches-py (test_batch = the test images). Returns the two directories."""
    x, y = make_images(n_train + n_test, seed)
    folder, cifar = Path(root) / "imagefolder", Path(root) / "cifar-10-batches-py"
    write_image_folder(folder, x, y, CLASSES)
    write_cifar_batches(cifar, (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), CLASSES)
    return folder, cifar
