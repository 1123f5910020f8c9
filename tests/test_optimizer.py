"""The optimizer axis (issue 12, item 16): cell identity, validation, sweep expansion, the optimizer built
and named, `--optimizer` on the command line, and rows from before the axis existed."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.config.cell import Cell, validate
from bench.config.sweep import SweepSpec, build_spec, expand
from bench.errors import UsageError
from bench.models.training import make_optimizer, optimizer_name
from bench.models import get_entry
from bench.results import load
from rv_models.transfer import freeze_backbone


def test_default_optimizer_cells_keep_the_ids_they_had_before_the_field():
    # Ids computed by bench/config/cell.py at 366eb57, before Cell had an optimizer: --resume of
    # runs written then must still find their finished cells.
    assert Cell("resnet18", "rv", 2, 32, mode="train").cell_id == "55bc56ebce3f"
    old = Cell("vit_base_patch16_224", "timm", 64, 224, precision="amp-bf16", compile="default",
               device="cuda:0", round=1)
    assert old.cell_id == "5b5a63ce203c"


def test_a_chosen_optimizer_is_part_of_the_identity_and_the_label():
    default = Cell("resnet18", "rv", 2, 32, mode="train")
    sgd = Cell("resnet18", "rv", 2, 32, mode="train", optimizer="sgd")
    assert sgd.cell_id != default.cell_id
    assert sgd.label() == "resnet18 rv bs2 32px fp32 train sgd cpu r0"
    assert default.label() == "resnet18 rv bs2 32px fp32 train cpu r0"


@pytest.mark.parametrize("changes, match", [
    ({"optimizer": "lion", "mode": "train"}, "unknown optimizer 'lion'; valid: default, sgd, adamw"),
    ({"optimizer": "sgd"}, "optimizer 'sgd' is for train and finetune; inference runs none"),
])
def test_bad_optimizer_is_a_usage_error(changes, match):
    with pytest.raises(UsageError, match=match):
        validate(Cell("resnet18", "rv", 2, 32, **changes))


@pytest.mark.parametrize("arch, choice, name", [
    ("resnet18", "default", "sgd-momentum"),  # the ResNet family's usual optimizer
    ("resnet18", "sgd", "sgd-nesterov"),  # timm's benchmark optimizer
    ("resnet18", "adamw", "adamw"),
    ("vit_tiny_patch16_224", "default", "adamw"),
    ("vit_tiny_patch16_224", "sgd", "sgd-nesterov"),
])
def test_make_optimizer_builds_the_choice_over_trainable_parameters(arch, choice, name):
    entry = get_entry(arch, "rv")
    model = entry.build(num_classes=10, image_size=32)
    freeze_backbone(model)  # only the head's weight and bias stay trainable
    optimizer = make_optimizer(model, entry.family, choice)
    assert optimizer_name(optimizer) == name
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    if name == "sgd-nesterov":  # what timm's create_optimizer_v2("sgd") builds
        group = optimizer.param_groups[0]
        assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.0)


def test_optimizer_name_of_inference_is_none_and_plain_sgd_has_no_suffix():
    assert optimizer_name(None) is None
    assert optimizer_name(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)) == "sgd"


def test_optimizer_override_applies_to_train_cells_only_without_repeating_inference():
    spec = build_spec("smoke", "cpu", {"models": ["resnet18"], "impls": ["rv"], "batch_sizes": [1],
                                       "modes": ["inference", "train"], "optimizers": ["default", "sgd"]})
    cells = expand(spec)
    assert [(c.mode, c.optimizer) for c in cells] == [("inference", "default"), ("train", "default"),
                                                      ("train", "sgd")]


def test_spec_from_before_the_optimizer_axis_expands_to_default_optimizers():
    data = build_spec("smoke", "cpu", {"models": ["resnet18"], "modes": ["train"]}).to_json()
    for block in data["sweeps"]:
        del block["optimizers"]  # config.json of a run written before the axis existed
    cells = expand(SweepSpec.from_json(data))
    assert cells and {c.optimizer for c in cells} == {"default"}


def test_rows_without_an_optimizer_column_load_as_default(tmp_path):
    row = {"cell_id": "a", "arch": "resnet18", "impl": "rv", "mode": "train", "status": "ok"}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    assert load(tmp_path)["optimizer"].tolist() == ["default"]


def test_unknown_optimizer_flag_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["run", "--preset", "smoke", "--device", "cpu", "--out", str(out), "--modes", "train", "--optimizer", "lion"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvbench run: error: ") and "unknown optimizer 'lion'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
