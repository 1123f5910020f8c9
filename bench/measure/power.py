"""GPU power, clocks, temperature and energy during the timed loop, sampled through NVML.

A background thread polls nvidia-ml-py every `POWER_INTERVAL_S` while the loop runs. Energy per
image comes from the board's total-energy counter (Volta and newer) read at both ends of the
loop (`energy_source = "counter"`); where the counter is missing it is the trapezoid integral of
the sampled power (`"integrated"`, coarser: NVML's power reading is itself averaged by the driver).
Without nvidia-ml-py, without a driver, or on the CPU, every column is None and `power_note`
says why; nothing is raised and nothing is warned.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from bench.measure.sampler import BackgroundSampler

POWER_INTERVAL_S = 0.05

# NVML clock-event ("throttle") reason bits, from nvml.h.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

POWER_COLUMNS = (
    "power_w_mean", "power_w_max", "sm_clock_mhz", "mem_clock_mhz", "temp_c_max", "gpu_util_pct",
    "throttle_reasons", "energy_j_per_image", "energy_source",
)  # fmt: skip


def decode_throttle(mask: int) -> str:
    """Comma-separated names of the set reason bits ("" when none); unknown bits as hex."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    if rest:
        names.append(hex(rest))
    return ",".join(names)


def open_nvml() -> tuple[ModuleType | None, str]:
    """Import and initialise pynvml; returns (module, "") or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    return pynvml, ""


def nvml_handle(nvml: ModuleType, index: int) -> Any:
    """The NVML handle of CUDA device `index`.

    Matched by UUID, because CUDA and NVML may number devices differently (CUDA_VISIBLE_DEVICES,
    fastest-first ordering); by index where torch exposes no UUID or NVML does not know it (a MIG
    slice has its own UUID; NVML's power readings are the whole board's anyway).
    """
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except nvml.NVMLError:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


@dataclass(frozen=True)
class PowerSample:
    """One poll of the board; a field is None where the board does not report it (e.g. MIG)."""

    power_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temp_c: int | None
    util_pct: int | None
    throttle_mask: int | None


def empty_columns(note: str) -> dict:
    """All power columns None, with the reason."""
    return {**dict.fromkeys(POWER_COLUMNS), "power_note": note}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _max(values: list[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


class PowerMonitor:
    """Polls one NVML device between `start()` and `stop()`; `columns()` turns it into row columns.

    Owns one nvmlInit reference (from `open_nvml`) and releases it in `stop()`.
    """

    def __init__(self, nvml: ModuleType, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._sampler = BackgroundSampler(self._poll, POWER_INTERVAL_S)
        self._energy_mj: list[int] = []
        self._samples: list[tuple[float, PowerSample]] = []

    def _read(self, query: str, *args: Any) -> Any:
        """One NVML query, None where this board does not support it."""
        try:
            return getattr(self._nvml, query)(self._handle, *args)
        except self._nvml.NVMLError:
            return None

    def _poll(self) -> PowerSample:
        nvml = self._nvml
        milliwatts = self._read("nvmlDeviceGetPowerUsage")
        util = self._read("nvmlDeviceGetUtilizationRates")
        return PowerSample(
            power_w=None if milliwatts is None else milliwatts / 1e3,
            sm_clock_mhz=self._read("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
            mem_clock_mhz=self._read("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM),
            temp_c=self._read("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
            util_pct=None if util is None else util.gpu,
            throttle_mask=self._read("nvmlDeviceGetCurrentClocksThrottleReasons"),
        )

    def start(self) -> None:
        """Read the energy counter and start polling."""
        self._energy_mj.append(self._read("nvmlDeviceGetTotalEnergyConsumption"))
        self._sampler.start()

    def stop(self) -> None:
        """Stop polling, read the energy counter again and release NVML."""
        self._samples = self._sampler.stop()
        self._energy_mj.append(self._read("nvmlDeviceGetTotalEnergyConsumption"))
        self._nvml.nvmlShutdown()

    def _energy_j(self) -> tuple[float | None, str | None]:
        """Energy over the loop and where it came from."""
        begin, end = self._energy_mj
        if begin is not None and end is not None:
            return (end - begin) / 1e3, "counter"
        points = [(t, s.power_w) for t, s in self._samples if s.power_w is not None]
        if len(points) < 2:
            return None, None
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(points, points[1:])), "integrated"

    def columns(self, images: int) -> dict:
        """Power columns for `images` images processed between start() and stop()."""
        values = [s for _, s in self._samples]
        masks = [s.throttle_mask for s in values if s.throttle_mask is not None]
        energy_j, source = self._energy_j()
        return {
            "power_w_mean": _mean([s.power_w for s in values]),
            "power_w_max": _max([s.power_w for s in values]),
            "sm_clock_mhz": _mean([s.sm_clock_mhz for s in values]),
            "mem_clock_mhz": _mean([s.mem_clock_mhz for s in values]),
            "temp_c_max": _max([s.temp_c for s in values]),
            "gpu_util_pct": _mean([s.util_pct for s in values]),
            "throttle_reasons": decode_throttle(functools.reduce(operator.or_, masks)) if masks else None,
            "energy_j_per_image": None if energy_j is None else energy_j / images,
            "energy_source": source,
            "power_note": "" if source is not None else "board reports neither energy nor power",
        }


def power_monitor(device: torch.device) -> PowerMonitor | str:
    """A monitor for a CUDA device, or the reason there is none (CPU, no NVML, no handle)."""
    if device.type != "cuda":
        return f"no power measurement on {device.type}"
    nvml, why = open_nvml()
    if nvml is None:
        return why
    try:
        handle = nvml_handle(nvml, device.index)
    except nvml.NVMLError as exc:
        nvml.nvmlShutdown()
        return f"NVML has no handle for {device}: {exc}"
    return PowerMonitor(nvml, handle)
