"""Batches of a decoded set, on the device: shuffling, random crop and flip, resizing and normalising.

The random numbers (order, crop offsets, flips) are drawn on the CPU from one seeded generator, so a run's data
is the same on every device and for every implementation; the pixel work runs where the model runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

CROP_PADDING = 4


def train_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one epoch in a random order; the last incomplete batch is dropped (BatchNorm dislikes tiny
    batches), unless the set is smaller than one batch."""
    order = torch.randperm(n, generator=generator)
    steps = max(1, n // batch_size)
    for i in range(steps):
        yield order[i * batch_size:(i + 1) * batch_size]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from the image padded by CROP_PADDING zeros, and a random horizontal flip
    (the CIFAR recipe) of uint8 images B x 3 x H x W."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (b, 2), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (CROP_PADDING,) * 4)
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def model_input(x: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images B x 3 x H x W as the model's input: scaled to [0, 1], resized to size x size (bilinear,
    antialiased when shrinking), normalised with the weights' mean and std."""
    images = x.float().div_(255)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[-1])
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t
