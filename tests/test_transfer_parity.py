"""Training-dynamics parity: rv, torchvision and timm trained from the same weights, with the same seed, data order
and augmentation, in fp32 on the CPU with deterministic algorithms, take the same steps: the per-step losses agree
within 1e-4 relative. The models come from the same path `rvbench transfer` uses (bench.execute.transfer.prepare)."""

from __future__ import annotations

import pytest
import torch

from bench.config.precision import numerics, plan_for
from bench.data.datasets import ImageSet
from bench.data.procedural import CLASSES, make_images
from bench.execute.transfer import TransferRun, prepare, random_weights

STEPS = 3
BATCH = 4
SIZE = 32


@pytest.fixture(scope="module")
def data() -> ImageSet:
    x, y = make_images(BATCH * STEPS + 8, seed=3)
    return ImageSet(x[8:], y[8:], x[:8], y[:8], CLASSES, "procedural")


def _losses(arch: str, impl: str, data: ImageSet) -> list[float]:
    run = TransferRun(arch, impl, "full", 1, BATCH, SIZE, "fp32", "cpu", seed=0, num_classes=len(CLASSES))
    plan = plan_for("fp32")
    with numerics(plan, torch.device("cpu")):
        trainer, schedule = prepare(run, random_weights(arch, SIZE, seed=0), plan)
        schedule.apply(trainer.model, 0)
        generator = torch.Generator().manual_seed(0)
        return [loss.item() for loss in trainer.train_epoch(data.train_x, data.train_y, BATCH, generator)]


@pytest.mark.parametrize("arch, impls", [("resnet18", ("rv", "torchvision", "timm")),
                                         ("vit_tiny_patch16_224", ("rv", "timm"))])
def test_per_step_losses_agree_across_implementations(arch: str, impls: tuple[str, ...], data: ImageSet) -> None:
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        losses = {impl: _losses(arch, impl, data) for impl in impls}
    finally:
        torch.use_deterministic_algorithms(deterministic)
    rv = torch.tensor(losses["rv"], dtype=torch.float64)
    assert len(rv) == STEPS and not torch.allclose(rv, rv[0].expand(STEPS))  # the weights really moved
    for impl in impls[1:]:
        other = torch.tensor(losses[impl], dtype=torch.float64)
        assert torch.allclose(other, rv, rtol=1e-4, atol=0), f"{impl} vs rv: {losses[impl]} vs {losses['rv']}"
