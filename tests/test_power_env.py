"""The environment columns, the device table and CPU memory (power through NVML: test_power_nvml.py)."""

from __future__ import annotations

import mmap
import os
import re
import time

import pytest
import torch

from bench.hardware.gpus import H100_NVL, H100_PCIE, H100_SXM, H200_NVL, H200_SXM, match_device, peak_tflops_for
from bench.hardware.topology import parse_cpulist
from bench.measure.env import collect_env
from bench.errors import UsageError
from bench.measure.memory import RssPeak, weights_bytes

ENV_KEYS = [
    "env_torch", "env_torchvision", "env_timm", "env_fvcore", "env_cuda", "env_cudnn", "env_gpu_name",
    "env_driver", "env_sm_count", "env_gpu_mem_gb", "env_cpu", "env_cpu_governor", "env_threads", "env_cpu_affinity",
    "env_compile_threads", "env_os", "env_python", "env_host", "env_git_commit", "env_git_dirty", "env_timestamp",
]  # fmt: skip


def test_collect_env_cpu():
    env = collect_env("cpu")
    assert list(env) == ENV_KEYS
    assert env["env_torch"] == torch.__version__
    assert env["env_gpu_name"] is None and env["env_driver"] is None and env["env_sm_count"] is None
    assert env["env_threads"] == torch.get_num_threads()
    assert parse_cpulist(env["env_cpu_affinity"]) == os.sched_getaffinity(0)
    assert env["env_cpu"]
    assert env["env_cpu_governor"] is None or env["env_cpu_governor"].isidentifier()  # "performance", ...; no cpufreq
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
