"""Transfer learning helpers on rv, torchvision and timm models of both families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rv_models.transfer import (
    Stage,
    StageSchedule,
    classifier,
    count_trainable,
    create_transfer_model,
    freeze_backbone,
    param_groups,
    replace_head,
    unfreeze,
    unfreeze_last,
)

# the smallest ViT each library has; the group logic is the same for every depth divisible by 4
CASES = [
    ("resnet18", "rv"),
    ("resnet18", "torchvision"),
    ("resnet18", "timm"),
    ("vit_tiny_patch16_224", "rv"),
    ("vit_base_patch32_224", "torchvision"),
    ("vit_tiny_patch16_224", "timm"),
]
RESNET_GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
VIT_GROUPS = ["patch_embed", "blocks.0-2", "blocks.3-5", "blocks.6-8", "blocks.9-11", "head"]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "-".join(case))
def case(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    arch, impl = request.param
    return arch, create_transfer_model(arch, impl, num_classes=7)


def test_new_head_is_the_only_trainable_part_and_gives_the_right_shape(case: tuple[str, nn.Module]) -> None:
    arch, model = case
    freeze_backbone(model)
    head = classifier(model)
    assert head.out_features == 7
    assert count_trainable(model) == head.weight.numel() + head.bias.numel()
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 224, 224)).shape == (2, 7)


def test_frozen_parameters_get_no_grad_and_stay_put_after_a_step(case: tuple[str, nn.Module]) -> None:
    _, model = case
    freeze_backbone(model)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    model.train()
    nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 5])).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None, name
            assert torch.equal(p, frozen[name]), name
    assert all(not torch.equal(p, b) for p, b in zip(trainable, before))
    model.zero_grad(set_to_none=True)


def test_staged_unfreezing_trains_the_last_k_groups(case: tuple[str, nn.Module]) -> None:
    arch, model = case
    groups = param_groups(model)
    assert [g.name for g in groups] == (RESNET_GROUPS if arch.startswith("resnet") else VIT_GROUPS)
    sizes = [sum(p.numel() for p in g.params) for g in groups]
    assert sum(sizes) == sum(p.numel() for p in model.parameters())
    for k in range(len(groups) + 1):
        unfreeze_last(model, k)
        assert count_trainable(model) == sum(sizes[len(sizes) - k:])
    unfreeze(model)
    assert count_trainable(model) == sum(sizes)
    with pytest.raises(ValueError, match=r"stage 7 out of range: .* has 6 groups \(0\.\.6\)"):
        unfreeze_last(model, 7)


def test_vit_blocks_split_into_four_groups_for_every_depth() -> None:
    with torch.device("meta"):
        model = create_transfer_model("vit_huge_patch14_224", num_classes=3)
    names = [g.name for g in param_groups(model)]
    assert names == ["patch_embed", "blocks.0-7", "blocks.8-15", "blocks.16-23", "blocks.24-31", "head"]


def test_replace_head_keeps_features_and_updates_num_classes() -> None:
    with torch.device("meta"):
        model = create_transfer_model("vit_tiny_patch16_224", "timm", num_classes=3, freeze_backbone=False)
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())
    replace_head(model, 11)
    assert model.head.weight.shape == (11, 192) and model.num_classes == 11


def test_bad_impl_arch_and_model_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown library 'keras'; valid: rv, torchvision, timm"):
        create_transfer_model("resnet18", "keras", num_classes=2)
    with pytest.raises(ValueError, match="torchvision has no 'vit_small_patch16_224'; valid: resnet18"):
        create_transfer_model("vit_small_patch16_224", "torchvision", num_classes=2)
    with pytest.raises(ValueError, match="unsupported model Linear: expected a ResNet or ViT"):
        freeze_backbone(nn.Linear(2, 2))


def _trained_groups(model: nn.Module) -> list[str]:
    return [g.name for g in param_groups(model) if all(p.requires_grad for p in g.params)]


@pytest.mark.parametrize("arch, second", [("resnet18", "layer4"), ("vit_tiny_patch16_224", "blocks.9-11")])
def test_staged_schedule_unfreezes_head_then_last_group_then_all(arch: str, second: str) -> None:
    with torch.device("meta"):
        model = create_transfer_model(arch, num_classes=5)
    schedule = StageSchedule.staged(8)
    assert [s.epochs for s in schedule.stages] == [2, 2, 4] and schedule.epochs == 8
    groups = [g.name for g in param_groups(model)]
    seen = []
    for epoch in range(schedule.epochs):
        schedule.apply(model, epoch)
        seen.append(_trained_groups(model))
    assert seen == [["head"]] * 2 + [[second, "head"]] * 2 + [groups] * 4
    # any other parameter is frozen in every stage
    schedule.apply(model, 2)
    assert count_trainable(model) == sum(p.numel() for g in param_groups(model)[-2:] for p in g.params)


def test_lr_groups_give_the_backbone_the_scaled_rate() -> None:
    with torch.device("meta"):
        model = create_transfer_model("vit_tiny_patch16_224", num_classes=5)
    groups = StageSchedule((Stage(3),), backbone_lr_scale=0.1).lr_groups(model, 1e-3)
    assert [g["name"] for g in groups] == VIT_GROUPS
    assert [g["lr"] for g in groups] == pytest.approx([1e-4] * 5 + [1e-3])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_train_mode_keeps_frozen_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = create_transfer_model("resnet18", num_classes=3)
    StageSchedule((Stage(1, train_last=1),)).apply(model, 0)
    assert model.fc.training and not model.bn1.training and not model.layer4[1].bn2.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before)
    StageSchedule((Stage(1),)).apply(model, 0)
    assert model.bn1.training


def test_bad_schedules_are_rejected() -> None:
    with pytest.raises(ValueError, match="staged fine-tuning needs >= 3 epochs"):
        StageSchedule.staged(2)
    with pytest.raises(ValueError, match="stages of >= 1 epoch"):
        StageSchedule((Stage(0),))
    with pytest.raises(ValueError, match="epoch out of range: the schedule has 3 epochs"):
        StageSchedule.staged(3).stage_at(3)
