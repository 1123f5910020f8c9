"""rv_models architectures: names, parameter counts, shapes, options and the ViT building blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rv_models import create_model, resize_pos_embed
from rv_models.convert import TORCHVISION_NAMES
from rv_models.registry import family_of
from rv_models.resnet import BasicBlock, Bottleneck
from rv_models.vit import DropPath, PatchEmbed


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _meta_model(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet51'; valid: resnet18, resnet34, .*vit_huge_patch14_224"):
        create_model("resnet51")


def test_option_of_the_other_family_is_rejected() -> None:
    with pytest.raises(TypeError, match="img_size"):
        create_model("resnet18", img_size=128)


@pytest.mark.parametrize("arch", TORCHVISION_NAMES)
def test_param_count_matches_torchvision_published(arch: str) -> None:
    for weights in torchvision.models.get_model_weights(TORCHVISION_NAMES[arch]):
        size = weights.transforms.keywords["crop_size"]  # ViT counts depend on the position-embedding length
        model = _meta_model(arch, **({"img_size": size} if family_of(arch).takes_image_size else {}))
        assert model.get_num_params() == weights.meta["num_params"], weights


@pytest.mark.parametrize(
    ("arch", "dim", "depth", "heads", "mlp"),
    [
        ("vit_tiny_patch16_224", 192, 12, 3, 768),
        ("vit_small_patch16_224", 384, 12, 6, 1536),
        ("vit_huge_patch14_224", 1280, 32, 16, 5120),
    ],
)
def test_vit_configs(arch: str, dim: int, depth: int, heads: int, mlp: int) -> None:
    model = _meta_model(arch)
    assert len(model.blocks) == depth
    assert model.blocks[0].attn.num_heads == heads
    assert model.blocks[0].mlp.fc1.weight.shape == (mlp, dim)
    assert model.blocks[0].attn.qkv.bias is not None
    assert model.norm.eps == model.blocks[0].norm1.eps == 1e-6


def test_resnet_options_and_channels_last() -> None:
    model = create_model("resnet18", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    assert expected.shape == (2, 10)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bottleneck_is_v1_5_with_stride_on_the_3x3() -> None:
    block = _meta_model("resnet50").layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert isinstance(block.downsample[0], nn.Conv2d) and block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_zero_init_residual_makes_each_block_an_identity_branch(arch: str) -> None:
    model = create_model(arch, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(not b.last_bn().weight.any() for b in blocks)
    assert create_model(arch).layer1[0].last_bn().weight.all()


def test_vit_other_image_size_and_classes() -> None:
    model = create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, in_chans=1).eval()
    assert model.pos_embed.shape == (1, 1 + 16, 192)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_vit_dropout_and_drop_path_act_only_in_training() -> None:
    model = create_model("vit_tiny_patch16_224", img_size=32, drop_rate=0.1, drop_path_rate=0.2)
    assert isinstance(model.blocks[-1].drop_path, DropPath) and model.blocks[-1].drop_path.p == pytest.approx(0.2)
    assert isinstance(model.blocks[0].drop_path, nn.Identity)  # the rate rises from 0 at the first block
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_manual_patch_embedding_with_unfold_and_linear_equals_the_conv() -> None:
    embed = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24)
    x = torch.randn(2, 3, 32, 32)
    linear = nn.Linear(3 * 8 * 8, 24)
    with torch.no_grad():
        linear.weight.copy_(embed.proj.weight.flatten(1))  # (out, c*kh*kw): the order unfold uses
        linear.bias.copy_(embed.proj.bias)
        patches = F.unfold(x, kernel_size=8, stride=8).transpose(1, 2)  # (B, patches, c*kh*kw), row-major
        torch.testing.assert_close(linear(patches), embed(x), rtol=1e-5, atol=1e-5)


def test_resize_pos_embed_keeps_the_class_slot_and_resamples_the_grid() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert resize_pos_embed(pos, 14) is pos
    resized = resize_pos_embed(pos, 24)
    assert resized.shape == (1, 1 + 24 * 24, 8)
    assert torch.equal(resized[:, 0], pos[:, 0])
    constant = torch.ones(1, 1 + 4 * 4, 8)
    torch.testing.assert_close(resize_pos_embed(constant, 7), torch.ones(1, 1 + 7 * 7, 8))


def test_resize_pos_embed_rejects_a_non_square_grid() -> None:
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(torch.zeros(1, 1 + 12, 8), 4)
