"""measure_cell and its parts on the CPU: steps really train, precisions restore global state,
bad combinations are usage errors, and a measured row has every contract column."""

from __future__ import annotations

import copy
import json
import weakref

import pytest
import torch

from bench.config.cell import Cell
from bench.errors import UsageError
from bench.measure.cell import measure_cell
from bench.models import get_entry
from bench.columns import MEASURE_COLUMNS
from bench.config.precision import numerics, numerics_state, plan_for
from bench.execute.step import freezing_enabled, graphs_compiled, inductor_freezing, make_step
from bench.models.training import make_optimizer, prepare_mode
from bench.config.sweep import TimingConfig


QUICK = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=2, min_s=0.0, max_iters=3)


def _step_once(arch: str, impl: str, mode: str, size: int = 32) -> tuple[torch.nn.Module, dict, dict]:
    """Build a model, prepare it for `mode`, run one optimisation step; return it, state before, state after."""
    torch.manual_seed(0)
    entry = get_entry(arch, impl)
    model = entry.build(num_classes=10, image_size=size)
    prepare_mode(model, mode)
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(2, 3, size, size), torch.randint(0, 10, (2,))
    step = make_step(model, mode, x, y, plan_for("fp32"), make_optimizer(model, entry.family), cudagraph_steps=False)
    step()
    return model, before, model.state_dict()


def test_train_changes_weights_and_batchnorm_statistics():
    model, before, after = _step_once("resnet18", "rv", "train")
    assert all(p.requires_grad for p in model.parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {name for name, _ in model.named_parameters()} <= changed
    assert "bn1.running_mean" in changed


@pytest.mark.parametrize(
    ("arch", "impl"),
    [("resnet18", "rv"), ("resnet18", "torchvision"), ("vit_tiny_patch16_224", "timm")],
)
def test_finetune_trains_only_the_head(arch, impl):
    model, before, after = _step_once(arch, impl, "finetune")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = set(before) - trainable  # frozen parameters and every buffer
    assert trainable and frozen
    assert all(not torch.equal(before[k], after[k]) for k in trainable)
    assert all(torch.equal(before[k], after[k]) for k in frozen)


def test_finetune_model_gives_the_eval_outputs():
    torch.manual_seed(0)
    model = get_entry("resnet18", "rv").build(num_classes=10, image_size=32)
    reference = copy.deepcopy(model).eval()
    prepare_mode(model, "finetune")
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.requires_grad  # the head is in the graph...
    with torch.no_grad():
        torch.testing.assert_close(out, reference(x))  # ...and the backbone computes what eval does


def test_numerics_sets_and_restores_global_switches():
    start = numerics_state()
    with numerics(plan_for("tf32"), torch.device("cpu")):
        assert numerics_state()["tf32_matmul"] and numerics_state()["tf32_cudnn"]
    with numerics(plan_for("fp32"), torch.device("cpu")):
        assert not numerics_state()["tf32_matmul"] and not numerics_state()["tf32_cudnn"]
    assert numerics_state() == start


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"precision": "fp16"}, "needs CUDA"),
        ({"precision": "tf32"}, "needs CUDA"),
        ({"precision": "int8"}, "valid: fp32"),
        ({"compile": "reduce-overhead"}, "needs CUDA"),
        ({"compile": "default-freeze", "mode": "train"}, "runs inference only; for train use one of: none"),
        ({"compile": "max-autotune-freeze", "mode": "finetune"}, "runs inference only; for finetune"),
        ({"mode": "eval"}, "valid: inference"),
        ({"impl": "torchvision", "arch": "vit_tiny_patch16_224"}, "impls with vit_tiny_patch16_224"),
    ],
)
def test_impossible_cells_are_usage_errors(changes, match):
    cell = Cell(**{**dict(arch="resnet18", impl="rv", batch_size=2, image_size=64), **changes})
    with pytest.raises(UsageError, match=match):
        measure_cell(cell, QUICK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
def test_missing_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="not available"):
        measure_cell(Cell("resnet18", "rv", 2, 64, device="cuda:0"), QUICK)


@pytest.mark.parametrize(
    ("precision", "mode", "channels_last"),
    [
        ("fp32", "inference", False),
        ("amp-bf16", "inference", True),
        ("fp32", "train", False),
        ("bf16", "finetune", False),
    ],
)
def test_measure_cell_row_has_every_column(precision, mode, channels_last):
    cell = Cell("resnet18", "rv", batch_size=2, image_size=64, precision=precision, mode=mode,
                channels_last=channels_last)
    before = numerics_state()
    row = measure_cell(cell, QUICK)
    assert numerics_state() == before
    samples = row.pop("samples_ms")
    # The environment is the run's, collected once per run by the runner, never per cell.
    assert sorted(row) == sorted(MEASURE_COLUMNS)
    json.dumps(row, allow_nan=False)
    assert 2 <= len(samples) == row["n_iters"] <= 3
    assert row["warmup_iters"] == 1
    assert row["step_ms_min"] <= row["step_ms_p50"] <= row["step_ms_max"]
    assert row["throughput"] == pytest.approx(2 / (row["step_ms_p50"] / 1e3))
    assert row["params_total"] == sum(p.numel() for p in get_entry("resnet18", "rv").build().parameters())
    expected_trainable = 513_000 if mode == "finetune" else row["params_total"]  # fc: 512 x 1000 + 1000
    assert row["params_trainable"] == expected_trainable
    assert row["gflops_per_image"] > 0
    per_step = row["gflops_per_step"] / (2 * row["gflops_per_image"])
    assert per_step > 2 if mode == "train" else per_step == pytest.approx(1.0)
    assert row["achieved_tflops"] == pytest.approx(row["gflops_per_step"] / row["step_ms_p50"])
    assert row["mfu"] is None
    assert row["compile_s"] is None and row["recompiles"] == 0 and row["recompiles_timed"] == 0
    assert row["inductor_freezing"] is False
    bytes_per_weight = 2 if precision == "bf16" else 4
    assert row["mem_weights_mb"] * 2**20 >= row["params_total"] * bytes_per_weight
    assert row["mem_peak_alloc_mb"] is None and row["mem_rss_delta_mb"] >= 0
    assert row["power_note"] == "no power measurement on cpu" and row["power_w_mean"] is None
    assert row["tf32_matmul"] is False and row["tf32_cudnn"] is False


def test_graph_counter_sees_a_recompilation():
    def double(t: torch.Tensor) -> torch.Tensor:
        return t * 2

    compiled = torch.compile(double, backend="eager", dynamic=False)
    start = graphs_compiled()
    compiled(torch.ones(2))
    assert graphs_compiled() == start + 1
    compiled(torch.ones(2))
    assert graphs_compiled() == start + 1  # cache hit
    compiled(torch.ones(3))  # new shape, static shapes: recompiles
    assert graphs_compiled() == start + 2


@pytest.mark.slow
def test_measure_cell_compiled():
    cell = Cell("resnet18", "rv", batch_size=1, image_size=32, compile="default")
    row = measure_cell(cell, QUICK)
    assert row["compile_s"] > 0
    assert row["recompiles_timed"] == 0
    assert row["n_iters"] >= 2


def test_inductor_freezing_is_what_the_mode_says_and_restored():
    from torch._inductor import config

    with config.patch(freezing=True):  # as TORCHINDUCTOR_FREEZING=1 would set it
        with inductor_freezing("default"):
            assert not freezing_enabled("default")  # a plain compile row never freezes
        assert config.freezing
    with pytest.raises(RuntimeError, match="cell failed"):
        with inductor_freezing("max-autotune-freeze"):
            assert freezing_enabled("max-autotune-freeze")
            raise RuntimeError("cell failed")
    assert not config.freezing
    assert not freezing_enabled("none")


@pytest.mark.slow
def test_measure_cell_compiled_with_freezing(monkeypatch):
    from torch._inductor import config, freezing

    calls = []
    freeze = freezing.freeze
    monkeypatch.setattr(freezing, "freeze", lambda *a, **k: calls.append(1) or freeze(*a, **k))
    before = config.freezing
    cell = Cell("resnet18", "rv", batch_size=1, image_size=32, compile="default-freeze")
    row = measure_cell(cell, QUICK)
    assert calls  # Inductor ran its freeze pass under the step's inference_mode
    assert row["inductor_freezing"] is True and row["compile_s"] > 0 and row["recompiles_timed"] == 0
    assert config.freezing == before


def test_the_cell_is_dropped_before_its_memory_is_released(monkeypatch):
    """prepared_cell's release frees only what nothing holds: measure_cell drops its BuiltCell first,
    so the model is garbage when the release empties the CUDA cache (else a process that measured a
    cell, gpu-check's, would keep it cached while a worker searches the largest batch)."""
    from bench.execute import prepare

    models, alive_at_release = [], []
    real_build, real_free = prepare._build, prepare.free_cuda_memory

    def build(*args):
        built = real_build(*args)
        models.append(weakref.ref(built.model))
        return built

    def free():
        real_free()
        alive_at_release.append(models[-1]() is not None)

    monkeypatch.setattr(prepare, "_build", build)
    monkeypatch.setattr(prepare, "free_cuda_memory", free)
    measure_cell(Cell("resnet18", "rv", batch_size=2, image_size=32, mode="train"), QUICK)
    assert alive_at_release == [False]


def test_free_cuda_memory_drops_cublas_workspaces_then_the_cache(monkeypatch):
    """torch keeps a cuBLAS workspace per handle for the life of the process; dropping them first
    puts their blocks in the cache that empty_cache then gives back to the driver."""
    from bench.execute import prepare

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: calls.append("cublas"), raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cache"))
    prepare.free_cuda_memory()
    assert calls == ["cublas", "cache"]


def test_a_tight_target_times_a_real_cell_longer_than_a_loose_one():
    """The adaptive rule on a real CPU cell: ±90% is known at the first look (6 steps), ±0.1% is not within
    the second the cap allows, so the tight loop runs more steps and says it did not converge."""
    cell = Cell("resnet18", "rv", batch_size=1, image_size=32)
    loose, tight = (measure_cell(cell, TimingConfig(warmup_iters=2, warmup_s=0.0, min_iters=6, min_s=0.0,
                                                    max_s=1.0, target_rel_ci=target))
                    for target in (0.9, 0.001))
    assert loose["converged"] is True and loose["n_iters"] < tight["n_iters"]
    assert tight["converged"] is False and tight["timed_s"] >= 1.0
    for row in (loose, tight):
        assert row["step_ms_p50_ci_low"] <= row["step_ms_p50"] <= row["step_ms_p50_ci_high"]
