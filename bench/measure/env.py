"""The environment a run measured in, as the env_* columns every results row carries.

Numbers without their software versions, GPU, driver and commit cannot be compared or reproduced,
so this travels inside every row rather than in a file name. Fields that do not apply (GPU fields
on a CPU run, the commit outside a git checkout) are None. The CPUs (and the first one's cpufreq
governor) and compile threads are the slot's (bench.hardware.topology): with several slots on a
node, each runs on its own cores.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
from pathlib import Path

import torch

from bench.columns import values
from bench.hardware.topology import COMPILE_THREADS_ENV, cpu_governor, format_cpulist, process_cpus
from bench.measure.power import open_nvml
from bench.provenance import git_state


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    nvml, _ = open_nvml()
    if nvml is None:
        return None
    try:
        version = nvml.nvmlSystemGetDriverVersion()
    finally:
        nvml.nvmlShutdown()
    return version.decode() if isinstance(version, bytes) else version


def collect_env(device: str) -> dict:
    """The env_* columns for a run on `device` ("cpu" or "cuda:N")."""
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    props = torch.cuda.get_device_properties(dev) if gpu else None
    commit, dirty = git_state()
    uname = platform.uname()
    cpus = process_cpus()
    return values(
        "environment",
        env_torch=torch.__version__,
        env_torchvision=_version("torchvision"),
        env_timm=_version("timm"),
        env_fvcore=_version("fvcore"),
        env_cuda=torch.version.cuda,
        env_cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        env_gpu_name=props.name if gpu else None,
        env_driver=_driver_version() if gpu else None,
        env_sm_count=props.multi_processor_count if gpu else None,
        env_gpu_mem_gb=round(props.total_memory / 2**30, 2) if gpu else None,  # GiB
        env_cpu=_cpu_model(),
        env_cpu_governor=cpu_governor(min(cpus) if cpus else 0),
        env_threads=torch.get_num_threads(),
        env_cpu_affinity=format_cpulist(cpus) if cpus else None,
        env_compile_threads=int(os.environ[COMPILE_THREADS_ENV]) if os.environ.get(COMPILE_THREADS_ENV) else None,
        env_os=f"{uname.system} {uname.release}",
        env_python=platform.python_version(),
        env_host=socket.gethostname(),
        env_git_commit=commit,
        env_git_dirty=dirty,
        env_timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
