"""The environment a run measured in, as the env_* columns every results row carries.

Numbers without their software versions, GPU, driver and commit cannot be compared or reproduced,
so this travels inside every row rather than in a file name. Fields that do not apply (GPU fields
on a CPU run, the commit outside a git checkout) are None.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

import torch

from bench.measure.power import open_nvml

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from; (None, None) if it is not one.

    Dirty means tracked files differ from the commit; untracked files (run outputs) do not count.
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != REPO_ROOT:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return _git("rev-parse", "HEAD"), None if status is None else status != ""


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
    return {
        "env_torch": torch.__version__,
        "env_torchvision": _version("torchvision"),
        "env_timm": _version("timm"),
        "env_fvcore": _version("fvcore"),
        "env_cuda": torch.version.cuda,
        "env_cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "env_gpu_name": props.name if gpu else None,
        "env_driver": _driver_version() if gpu else None,
        "env_sm_count": props.multi_processor_count if gpu else None,
        "env_gpu_mem_gb": round(props.total_memory / 2**30, 2) if gpu else None,  # GiB
        "env_cpu": _cpu_model(),
        "env_threads": torch.get_num_threads(),
        "env_os": f"{uname.system} {uname.release}",
        "env_python": platform.python_version(),
        "env_host": socket.gethostname(),
        "env_git_commit": commit,
        "env_git_dirty": dirty,
        "env_timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
