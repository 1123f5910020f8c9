"""Weight conversion: every arch x library pair computes the same function after conversion, both directions.

Models are built on the meta device and then filled with random values by `_randomize` rather than initialised by
their libraries: this is faster for the 600M-parameter ViT-H, and it makes every tensor distinct and non-zero
(torchvision zero-initialises its ViT head and several biases, which would let a wrong mapping go unnoticed).
"""

from __future__ import annotations

from itertools import chain

import pytest
import torch
import torchvision
from torch import nn

from rv_models import convert_state_dict
from rv_models.convert import library_archs
from rv_models.registry import family_of

# Input sizes: ViTs other than these three run on a 4x4 patch grid, other families at 64 px, to keep the CPU test
# quick. Every weight but the length of the position embedding is the same as at 224; the three below cover the 224
# grid.
_FULL_SIZE_VITS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch32_224")
_SIZE = 64

PAIRS = [(arch, lib) for lib in ("torchvision", "timm") for arch in library_archs(lib)]


@pytest.fixture(autouse=True, scope="module")
def _no_grad():
    with torch.no_grad():
        yield


def _image_size(arch: str) -> int:
    if not family_of(arch).takes_image_size:
        return _SIZE
    return 224 if arch in _FULL_SIZE_VITS else 4 * family_of(arch).input_multiple_of(arch)


def _randomize(model: nn.Module) -> nn.Module:
    """Materialise a meta model on the CPU with random, well-scaled values in every parameter and buffer."""
    model.to_empty(device="cpu")
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        if name.endswith("num_batches_tracked"):
            t.zero_()
        elif name.endswith("running_var"):
            t.uniform_(0.5, 1.5)
        elif name.endswith(("running_mean", "bias")) and t.ndim == 1:
            t.uniform_(-0.2, 0.2)
        elif t.ndim == 1:  # norm scales
            t.uniform_(0.8, 1.2)
        else:  # uniform with variance 1 / fan_in, cheaper to draw than normal
            bound = (3.0 / t[0].numel()) ** 0.5
            t.uniform_(-bound, bound)
    return model.eval()


def _library_model(arch: str, lib: str) -> nn.Module:
    with torch.device("meta"):
        model = family_of(arch).build(arch, lib, image_size=_image_size(arch))
    return _randomize(model)


def _rv_meta_model(arch: str) -> nn.Module:
    with torch.device("meta"):
        return family_of(arch).build(arch, "rv", image_size=_image_size(arch))


@pytest.mark.parametrize(("arch", "lib"), PAIRS)
def test_parity_both_directions(arch: str, lib: str) -> None:
    torch.manual_seed(0)
    size = _image_size(arch)
    x = torch.randn(1, 3, size, size)
    theirs = _library_model(arch, lib)

    ours = _rv_meta_model(arch)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), lib, "rv", arch), strict=True, assign=True)
    expected = theirs(x)
    assert expected.shape == (1, 1000)
    assert (ours.eval()(x) - expected).abs().max().item() <= 1e-5

    # reverse: new rv weights (scaled copies, distinct from the library's) into the library model
    ours.load_state_dict({k: v * 0.75 if v.is_floating_point() else v for k, v in ours.state_dict().items()},
                         assign=True)
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), "rv", lib, arch), strict=True)
    expected = ours(x)
    assert (theirs(x) - expected).abs().max().item() <= 1e-5


def test_torchvision_to_timm_goes_through_rv() -> None:
    with torch.device("meta"):
        tv = torchvision.models.vit_b_32()
    state = tv.state_dict()
    converted = convert_state_dict(state, "torchvision", "timm", "vit_base_patch32_224")
    in_proj = state["encoder.layers.encoder_layer_3.self_attention.in_proj_weight"]
    assert converted["blocks.3.attn.qkv.weight"] is in_proj
    back = convert_state_dict(converted, "timm", "torchvision", "vit_base_patch32_224")
    assert back.keys() == tv.state_dict().keys()


def test_wrong_state_dict_names_missing_and_unexpected_keys() -> None:
    state = dict(_rv_meta_model("resnet18").state_dict())
    del state["fc.weight"]
    state["fc.kernel"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \[fc\.weight\], unexpected keys \[fc\.kernel\]"):
        convert_state_dict(state, "rv", "torchvision", "resnet18")


def test_state_dict_of_another_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not match torchvision resnet50: missing keys .*layer1.0.conv3"):
        convert_state_dict(_rv_meta_model("resnet18").state_dict(), "torchvision", "rv", "resnet50")


@pytest.mark.parametrize(("src", "dst"), [("keras", "rv"), ("rv", "tv")])
def test_unknown_library_lists_valid_ones(src: str, dst: str) -> None:
    with pytest.raises(ValueError, match="valid: rv, torchvision, timm"):
        convert_state_dict({}, src, dst, "resnet18")


def test_arch_missing_from_library_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="torchvision has no 'vit_tiny_patch16_224'; valid: resnet18, .*vit_h"):
        convert_state_dict({}, "torchvision", "rv", "vit_tiny_patch16_224")


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="has no 'resnet51'; valid: resnet18"):
        convert_state_dict({}, "rv", "timm", "resnet51")
