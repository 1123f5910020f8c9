"""Power sampling (with a fake NVML), its absence, the environment columns and the device table."""

from __future__ import annotations

import mmap
import re
import sys
import time
import types
import warnings

import pytest
import torch

from bench.measure import power
from bench.hardware.gpus import H100_NVL, H100_PCIE, H100_SXM, H200_NVL, H200_SXM, match_device, peak_tflops_for
from bench.measure.env import collect_env
from bench.errors import UsageError
from bench.measure.memory import RssPeak, weights_bytes

ENV_KEYS = [
    "env_torch", "env_torchvision", "env_timm", "env_fvcore", "env_cuda", "env_cudnn", "env_gpu_name",
    "env_driver", "env_sm_count", "env_gpu_mem_gb", "env_cpu", "env_threads", "env_os", "env_python",
    "env_host", "env_git_commit", "env_git_dirty", "env_timestamp",
]  # fmt: skip


class FakeNvmlError(Exception):
    pass


def fake_nvml(energy: bool = True, util: bool = True, init_fails: bool = False) -> types.ModuleType:
    """A pynvml stand-in: 200 W, fixed clocks, energy counter advancing 1 J per read."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    counter = {"mj": 5_000, "inits": 0}

    def init():
        if init_fails:
            raise FakeNvmlError("Driver Not Loaded")
        counter["inits"] += 1

    def shutdown():
        counter["inits"] -= 1

    def total_energy(handle):
        if not energy:
            raise FakeNvmlError("Not Supported")
        counter["mj"] += 1_000
        return counter["mj"]

    def utilization(handle):
        if not util:
            raise FakeNvmlError("Not Supported")
        return types.SimpleNamespace(gpu=90, memory=40)

    nvml.nvmlInit, nvml.nvmlShutdown = init, shutdown
    nvml.nvmlDeviceGetPowerUsage = lambda h: 200_000
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if kind == 1 else 2619
    nvml.nvmlDeviceGetTemperature = lambda h, kind: 61
    nvml.nvmlDeviceGetUtilizationRates = utilization
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0x4
    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.counter = counter
    return nvml


def _monitor_columns(nvml: types.ModuleType, images: int = 10) -> dict:
    nvml.nvmlInit()
    monitor = power.PowerMonitor(nvml, handle=object())
    monitor.start()
    time.sleep(0.02)
    monitor.stop()
    return monitor.columns(images)


def test_energy_from_the_counter():
    nvml = fake_nvml()
    cols = _monitor_columns(nvml)
    assert cols["energy_source"] == "counter"
    assert cols["energy_j_per_image"] == pytest.approx(1.0 / 10)
    assert (cols["power_w_mean"], cols["power_w_max"]) == (200.0, 200.0)
    assert (cols["sm_clock_mhz"], cols["mem_clock_mhz"], cols["temp_c_max"]) == (1980, 2619, 61)
    assert cols["gpu_util_pct"] == 90
    assert cols["throttle_reasons"] == "sw_power_cap"
    assert cols["power_note"] == ""
    assert nvml.counter["inits"] == 0  # the monitor released its NVML reference


def test_energy_integrated_without_counter_and_missing_fields_are_none():
    cols = _monitor_columns(fake_nvml(energy=False, util=False), images=4)
    assert cols["energy_source"] == "integrated"
    assert cols["gpu_util_pct"] is None
    # 200 W over at least the 20 ms slept: at least 4 J in all, 1 J per image.
    assert cols["energy_j_per_image"] >= 200 * 0.02 / 4


def test_decode_throttle_reasons():
    assert power.decode_throttle(0) == ""
    assert power.decode_throttle(0x4 | 0x40) == "sw_power_cap,hw_thermal_slowdown"
    assert power.decode_throttle(0x1 | 0x10000) == "gpu_idle,0x10000"


def test_nvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert power.open_nvml() == (None, "nvidia-ml-py (pynvml) is not installed")
        note = power.power_monitor(torch.device("cuda:0"))
    assert note == "nvidia-ml-py (pynvml) is not installed"
    cols = power.empty_columns(note)
    assert all(cols[k] is None for k in power.POWER_COLUMNS)
    assert cols["power_note"] == note


def test_nvml_init_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_fails=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note = power.power_monitor(torch.device("cuda:0"))
    assert note == "NVML unavailable: Driver Not Loaded"


def test_no_power_on_cpu():
    assert power.power_monitor(torch.device("cpu")) == "no power measurement on cpu"


def test_collect_env_cpu():
    env = collect_env("cpu")
    assert list(env) == ENV_KEYS
    assert env["env_torch"] == torch.__version__
    assert env["env_gpu_name"] is None and env["env_driver"] is None and env["env_sm_count"] is None
    assert env["env_threads"] == torch.get_num_threads()
    assert env["env_cpu"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", env["env_timestamp"])
    if env["env_git_commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", env["env_git_commit"])
        assert isinstance(env["env_git_dirty"], bool)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("NVIDIA H100 80GB HBM3", H100_SXM),
        ("NVIDIA H100 PCIe", H100_PCIE),
        ("NVIDIA H100 NVL", H100_NVL),
        ("NVIDIA H200", H200_SXM),
        ("NVIDIA H200 NVL", H200_NVL),
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA H100", None),  # no form factor in the name: not guessed
        ("NVIDIA H800", None),
    ],
)
def test_match_hopper_form_factors(name, spec):
    assert match_device(name) is spec


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40", None),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("NVIDIA GeForce RTX 5090", "RTX 5090"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GB200", None),
        ("Tesla V100-SXM2-16GB", None),
        ("", None),
        (None, None),
    ],
)
def test_match_other_devices(name, expected):
    spec = match_device(name)
    assert (spec.name if spec else None) == expected


def test_peak_for_precision():
    name = "NVIDIA H100 80GB HBM3"
    assert peak_tflops_for(name, "fp32") == H100_SXM.peak_tflops["fp32"]
    assert peak_tflops_for(name, "tf32") == H100_SXM.peak_tflops["tf32"]
    assert peak_tflops_for(name, "amp-fp16") == peak_tflops_for(name, "fp16") == H100_SXM.peak_tflops["fp16"]
    assert peak_tflops_for(name, "amp-bf16") == peak_tflops_for(name, "bf16") == H100_SXM.peak_tflops["bf16"]
    assert peak_tflops_for("Some Future GPU", "fp16") is None
    with pytest.raises(UsageError, match="valid: fp32"):
        peak_tflops_for(name, "int8")


def test_weights_bytes_and_rss_columns():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    # Linear 4*3+3, BatchNorm weight/bias/mean/var 4*3 floats + int64 num_batches_tracked.
    assert weights_bytes(model) == (15 + 12) * 4 + 8
    rss = RssPeak()
    rss.start()
    # A fresh anonymous mapping: malloc could hand back heap pages that earlier tests left resident.
    blob = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(blob), 4096):
        blob[offset] = 1  # touch every page so it is resident
    time.sleep(0.05)
    rss.stop()
    cols = rss.columns(weights_bytes(model))
    assert cols["mem_peak_alloc_mb"] is None and cols["mem_activation_mb"] is None
    assert cols["mem_rss_delta_mb"] >= 32  # at least half of the touched 64 MB (sampling is approximate)
    assert "approximate" in cols["mem_note"]
    del blob


def test_mig_slice_gets_no_peak():
    """A MIG slice has a fraction of the board's compute: no MFU rather than a wrong one."""
    assert match_device("NVIDIA H100 80GB HBM3") is not None
    assert match_device("NVIDIA H100 80GB HBM3 MIG 1g.10gb") is None
