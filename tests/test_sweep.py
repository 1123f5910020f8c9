"""Presets, overrides, cell expansion order, and bad input rejected before anything is written."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.errors import UsageError
from bench.models import list_archs
from bench.config.presets import list_presets
from bench.config.sweep import build_spec, expand, timing_config


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "gpu-full", "full"])
def test_every_preset_expands_to_valid_cells(preset):
    device = "cuda:0" if preset.startswith("gpu") else "cpu"
    spec = build_spec(preset, device, {})
    cells = expand(spec)
    timing_config(spec)  # the preset's timing keys are TimingConfig fields
    assert cells and len({c.cell_id for c in cells}) == len(cells)
    assert all(c.device == device for c in cells)


def test_presets_shipped():
    assert set(list_presets()) >= {"smoke", "cpu", "gpu", "gpu-full", "full"}


def test_impls_interleaved_round_by_round_and_missing_pairs_skipped():
    spec = build_spec("smoke", "cpu", {"models": ["vit_tiny_patch16_224"], "batch_sizes": [1], "rounds": 2})
    cells = expand(spec)
    assert [(c.impl, c.round) for c in cells] == [("rv", 0), ("timm", 0), ("rv", 1), ("timm", 1)]
    assert spec.skipped_pairs == [["vit_tiny_patch16_224", "torchvision"]]


def test_default_gpu_preset_is_the_grid_that_fits_minutes():
    """resnet50 and vit_base x every impl: inference at bs 1/64/256 in four precisions (ViT without
    torch-default, its fp32), compile at bs256 amp-bf16 for rv and timm, train and finetune at bs64
    amp-bf16; one round, power (and its 3 s floor) at batch 256 only. Its time: tests/test_gpu_validate.py."""
    spec = build_spec("gpu", "cuda:0", {})
    cells = expand(spec)
    assert {(c.arch, c.impl) for c in cells} == {(a, i) for a in ("resnet50", "vit_base_patch16_224")
                                                for i in ("rv", "torchvision", "timm")}
    inference = {(c.arch, c.batch_size, c.precision) for c in cells if c.mode == "inference" and c.compile == "none"}
    assert inference == {(a, b, p) for a in ("resnet50", "vit_base_patch16_224") for b in (1, 64, 256)
                         for p in ("fp32", "tf32", "torch-default", "amp-bf16")
                         if not (a.startswith("vit") and p == "torch-default")}
    compiled = {(c.impl, c.batch_size, c.precision, c.mode) for c in cells if c.compile != "none"}
    assert compiled == {(i, 256, "amp-bf16", "inference") for i in ("rv", "timm")}
    assert {(c.batch_size, c.precision, c.mode) for c in cells if c.mode != "inference"} == {
        (64, "amp-bf16", "train"), (64, "amp-bf16", "finetune")}
    timing = timing_config(spec)
    assert len(cells) == 79 and spec.rounds == 1
    assert timing.no_power(64) and not timing.no_power(256)


@pytest.mark.parametrize("preset", ["gpu", "gpu-full"])
def test_gpu_presets_channels_last_only_for_resnets(preset):
    cells = expand(build_spec(preset, "cuda:0", {}))
    assert {c.arch.startswith("resnet") for c in cells if c.channels_last} == {True}
    assert {c.arch.startswith("vit") for c in cells if not c.channels_last} == {True}
    assert {"inference", "train", "finetune"} == {c.mode for c in cells}


def test_overrides_replace_axes_in_every_block():
    spec = build_spec("cpu", "cpu", {"models": ["resnet18"], "impls": ["rv"], "batch_sizes": [4],
                                     "image_size": 48, "channels_last": True})
    cells = expand(spec)
    assert {(c.arch, c.impl, c.batch_size, c.image_size, c.channels_last) for c in cells} == {
        ("resnet18", "rv", 4, 48, True)}


def test_models_all_means_every_registered_arch():
    spec = build_spec("smoke", "cpu", {"models": ["all"], "impls": ["rv"], "batch_sizes": [1], "image_size": 0})
    assert [c.arch for c in expand(spec)] == list_archs()


def test_only_missing_pairs_is_an_error():
    spec = build_spec("smoke", "cpu", {"models": ["vit_tiny_patch16_224"], "impls": ["torchvision"]})
    with pytest.raises(UsageError, match="no cells"):
        expand(spec)


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet9000"], "unknown arch 'resnet9000'; valid: resnet18"),
    (["--impls", "keras"], "unknown impl 'keras'; valid: rv, torchvision, timm"),
    (["--precisions", "fp8"], "unknown precision 'fp8'; valid: fp32"),
    (["--modes", "eval"], "unknown mode 'eval'; valid: inference, train, finetune"),
    (["--batch-sizes", "0"], "batch size must be an integer >= 1, got 0"),
    (["--precisions", "amp-fp16"], "precision 'amp-fp16' needs CUDA; on cpu use one of"),
    (["--compile", "default-freeze", "--modes", "train"],
     "compile mode 'default-freeze' freezes the weights, so it runs inference only; for train use one of: none"),
    (["--device", "cuda:7"], "device 'cuda:7' does not exist"),
    (["--device", "tpu"], "unknown device 'tpu'; valid: cpu, cuda:N"),
    (["--models", "vit_tiny_patch16_224", "--image-size", "100"], "multiple of its patch size 16, got 100"),
    (["--resume", "nowhere"], "drop --preset, --out, --device"),
    (["--resume", "nowhere", "--process-time"], "drop --preset, --process-time, --out, --device"),
    (["--out", "/proc/forbidden"], "cannot create the run directory under --out /proc/forbidden"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, capsys, args, message):
    device = [] if "--device" in args else ["--device", "cpu"]
    out = tmp_path / "reports"
    assert main(["run", "--preset", "smoke", "--out", str(out), *device, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvbench run: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_timing_power_switches_round_trip_through_config_json():
    """A preset's `power = false` (a bool among numbers) survives config.json and `--resume`; a number
    there is refused with one line, as is a bool for a numeric key."""
    from bench.config.sweep import SweepSpec

    spec = build_spec("smoke", "cpu", {})
    spec.timing.update(power=False, power_min_batch=64, process_time=True)
    again = SweepSpec.from_json(spec.to_json())
    assert timing_config(again).no_power(256) == "power not sampled: timing power = false"
    assert timing_config(again).process_time is True  # --process-time resumes as it ran
    for key, bad in (("power", 1), ("process_time", "yes"), ("min_s", True)):
        data = spec.to_json()
        data["timing"][key] = bad
        with pytest.raises(UsageError, match=f"timing {key} must be"):
            SweepSpec.from_json(data)


def test_a_run_from_before_the_adaptive_rule_resumes_with_its_fixed_rule():
    """config.json records the whole timing config, target included; one without a target (a run made
    before the adaptive rule) resumes with the fixed rule it was measured with, not today's default."""
    from bench.config.sweep import SweepSpec

    spec = build_spec("cpu", "cpu", {})
    assert spec.timing["target_rel_ci"] == 0.02 and spec.timing["max_s"] == timing_config(spec).max_s
    old = spec.to_json()
    old["timing"] = {k: v for k, v in old["timing"].items() if k not in ("target_rel_ci", "max_s")}
    assert timing_config(SweepSpec.from_json(old)).target_rel_ci is None
    bad = spec.to_json()
    bad["timing"]["target_rel_ci"] = 2.0
    with pytest.raises(UsageError, match="target_rel_ci must be a share between 0 and 1"):
        timing_config(SweepSpec.from_json(bad))


def test_a_backend_joins_the_blocks_that_can_run_it_and_only_none_is_refused():
    """A preset with a train-only or compile-only block (as gpu and gpu-smoke have) takes --backends: the backend
    joins the blocks with an inference cell without compile; a sweep where no block has one exits 2."""
    spec = build_spec("smoke", "cpu", {"models": ["resnet18"], "impls": ["rv"], "batch_sizes": [1],
                                       "backends": ["eager", "onnxruntime"]})
    spec.sweeps.append({**spec.sweeps[0], "modes": ["train"]})
    spec.sweeps.append({**spec.sweeps[0], "compile": ["default"]})
    cells = expand(spec)
    assert {(c.mode, c.compile) for c in cells if c.backend == "onnxruntime"} == {("inference", "none")}
    assert {(c.mode, c.compile) for c in cells if c.backend == "eager"} == {
        ("inference", "none"), ("train", "none"), ("inference", "default")}
    train_only = build_spec("smoke", "cpu", {"models": ["resnet18"], "impls": ["rv"], "batch_sizes": [1],
                                             "modes": ["train"], "backends": ["eager", "onnxruntime"]})
    with pytest.raises(UsageError, match="backend onnxruntime runs inference only"):
        expand(train_only)


def test_backends_with_a_max_batch_search_exit_2(tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(out), "--backends", "eager,openvino",
                 "--find-max-batch"]) == 2
    err = capsys.readouterr().err
    assert "--find-max-batch searches eager PyTorch's memory" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
