"""load_pretrained: real loading from the local caches, and an immediate clear error when weights are absent.

The Hugging Face cache location is fixed when huggingface_hub is imported, so the checks run in one subprocess
whose TORCH_HOME and HF_HOME point at a fresh temporary directory; its timeout bounds any network wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from pathlib import Path
import safetensors.torch, timm, torch, torchvision
from rv_models import create_model, load_pretrained

torch.set_grad_enabled(False)
result = {"missing": {}}
for source in ("torchvision", "timm"):
    for arch in ("resnet18", "vit_base_patch16_224"):
        with torch.device("meta"):  # no weights needed: the error must come before any loading
            model = create_model(arch)
        try:
            load_pretrained(model, arch, source)
        except FileNotFoundError as error:
            result["missing"][f"{source}/{arch}"] = str(error)

x = torch.randn(1, 3, 64, 64)
tv = torchvision.models.resnet18().eval()
url = torchvision.models.ResNet18_Weights.DEFAULT.url
path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
path.parent.mkdir(parents=True)
torch.save(tv.state_dict(), path)
model = load_pretrained(create_model("resnet18"), "resnet18").eval()
result["torchvision_diff"] = (model(x) - tv(x)).abs().max().item()

tm = timm.create_model("resnet18", num_classes=1000).eval()
repo_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
repo = Path(sys.argv[1]) / "hub" / ("models--" + repo_id.replace("/", "--"))
(repo / "refs").mkdir(parents=True)
(repo / "refs" / "main").write_text("0" * 40)
(repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
safetensors.torch.save_file(tm.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")
model = load_pretrained(create_model("resnet18"), "resnet18", "timm").eval()
result["timm_diff"] = (model(x) - tm(x)).abs().max().item()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("caches")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TORCH_HOME"))}
    env.update(TORCH_HOME=str(home / "torch"), HF_HOME=str(home), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(home)], env=env, capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_absent_weights_raise_a_clear_error(offline_run: dict) -> None:
    assert set(offline_run["missing"]) == {
        "torchvision/resnet18", "torchvision/vit_base_patch16_224", "timm/resnet18", "timm/vit_base_patch16_224",
    }  # fmt: skip
    for message in offline_run["missing"].values():
        assert "not in the local" in message and "nothing is downloaded" in message


def test_cached_torchvision_weights_load_and_match(offline_run: dict) -> None:
    assert offline_run["torchvision_diff"] <= 1e-5


def test_cached_timm_weights_load_through_timm_and_match(offline_run: dict) -> None:
    assert offline_run["timm_diff"] <= 1e-5


def test_bad_source_and_headless_timm_weights_are_rejected() -> None:
    from rv_models import load_pretrained

    with pytest.raises(ValueError, match="unknown pretrained source 'hub'; valid: torchvision, timm"):
        load_pretrained(None, "resnet18", "hub")
    with pytest.raises(ValueError, match="torchvision has no 'vit_tiny_patch16_224'"):
        load_pretrained(None, "vit_tiny_patch16_224", "torchvision")
    with pytest.raises(ValueError, match="no ImageNet-1k classifier head; use source='torchvision'"):
        load_pretrained(None, "vit_huge_patch14_224", "timm")
