"""GPU power, clocks, temperature and energy during the timed loop, sampled through NVML.

- NVML is initialised once per process (`process_nvml`), the first time a cell needs it, and never
  shut down: a worker measures many cells, and nvmlInit costs tens of milliseconds each time.
- A CUDA device is matched to its NVML handle by UUID (`nvml_device`), never by index: CUDA and
  NVML may number devices differently (CUDA_VISIBLE_DEVICES, fastest-first ordering). A UUID that
  NVML does not know gives no power columns, and `power_note` says so. A MIG slice gives none
  either: NVML's power and energy are the whole board's, shared by all its slices.
- Power is `NVML_FI_DEV_POWER_INSTANT` (through `nvmlDeviceGetFieldValues`) where the driver has
  it, `power_source = "instant"`; otherwise `nvmlDeviceGetPowerUsage`, which on Ampere and newer
  is a trailing average over about one second (`"average"`).
- A background thread polls every `POWER_INTERVAL_S` strictly inside the timed loop (no sample at
  its edges, where the GPU is idle).
- A row with power times for at least its monitor's `floor_s`: `ENERGY_PERIODS` updates of the energy
  counter, whose period each worker measures once per device (`energy_period_ms` on the row). Read at
  both ends of the loop, the counter is off by at most one period at each, so the energy is exact to
  2/ENERGY_PERIODS (4%) at worst, 1/ENERGY_PERIODS typically. Never below `POWER_FLOOR_MIN_S` (ten
  polls for the mean power) nor above `POWER_MIN_S`; `POWER_MIN_S` itself where the period is
  unknown or where power is NVML's trailing one-second average, which needs seconds to mean anything.
- Energy per image comes from the board's total-energy counter (Volta and newer) read at both ends
  of the loop (`energy_source = "counter"`); where the counter is missing it is the mean sampled
  power times the loop's duration (`"integrated"`).
- nvidia-ml-py marks `nvmlDeviceGetCurrentClocksThrottleReasons` and `nvmlDeviceGetTemperature`
  as removed in CUDA 14: their successors are tried first, and a query the binding lacks
  (AttributeError) or the driver refuses (NVMLError) reads as "not reported".

Without nvidia-ml-py, without a driver, or on the CPU, every column is None and `power_note`
says why; nothing is raised and nothing is warned.
"""

from __future__ import annotations

import functools
import itertools
import operator
import statistics
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch

from bench.columns import values
from bench.measure.sampler import BackgroundSampler

POWER_INTERVAL_S = 0.05
POWER_MIN_S = 3.0
POWER_FLOOR_MIN_S = 0.5
ENERGY_PERIODS = 50
# Each device's energy-counter period, measured once per process (`power_monitor`).
_COUNTER_PERIODS: dict[str, float | None] = {}

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

# The member of nvmlValue_t that holds a field value, indexed by NVML_VALUE_TYPE_* (0..6).
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
MIG_NOTE = "MIG slice: NVML's power and energy are the whole board's, shared by all its slices"


def decode_throttle(mask: int) -> str:
    """Comma-separated names of the set reason bits ("" when none); unknown bits as hex."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    if rest:
        names.append(hex(rest))
    return ",".join(names)


def open_nvml() -> tuple[ModuleType | None, str]:
    """Import and initialise pynvml; returns (module, "") or (None, why not).

    Each successful call holds one nvmlInit reference, which the caller releases with nvmlShutdown.
    """
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    return pynvml, ""


@functools.cache
def process_nvml() -> tuple[ModuleType | None, str]:
    """`open_nvml` once for this process, kept open for its life (see the module docstring)."""
    return open_nvml()


def nvml_query(nvml: ModuleType, handle: Any, *calls: tuple) -> Any:
    """The answer of the first of `calls`, each `(function name, *extra arguments)`, that this
    binding has and this driver supports for `handle`; None when none does."""
    for name, *args in calls:
        try:
            return getattr(nvml, name)(handle, *args)
        except (AttributeError, nvml.NVMLError):
            continue
    return None


def _is_mig(nvml: ModuleType, handle: Any) -> bool:
    """A MIG device handle, or a board in MIG mode (CUDA then sees only its slices, so a CUDA
    device matched to the board by UUID is one of them)."""
    if nvml_query(nvml, handle, ("nvmlDeviceIsMigDeviceHandle",)):
        return True
    modes = nvml_query(nvml, handle, ("nvmlDeviceGetMigMode",))
    return modes is not None and modes[0] == nvml.NVML_DEVICE_MIG_ENABLE


def nvml_device(device: torch.device) -> tuple[ModuleType, Any] | str:
    """(pynvml, the NVML handle) of CUDA device `device`, or why there is none to read power from.

    torch reports the device's UUID without a prefix; NVML names a whole GPU "GPU-<uuid>" and a MIG
    slice "MIG-<uuid>" (drivers >= R470), so both are tried. A known UUID that NVML does not find is
    reported, never replaced by NVML index N, which may be another board.
    """
    if device.type != "cuda":
        return f"no power measurement on {device.type}"
    nvml, why = process_nvml()
    if nvml is None:
        return why
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:
        return f"torch reports no UUID for {device}: its NVML device is unknown"
    for prefix in ("GPU-", "MIG-"):
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(f"{prefix}{uuid}")
        except (AttributeError, nvml.NVMLError):
            continue
        return MIG_NOTE if prefix == "MIG-" or _is_mig(nvml, handle) else (nvml, handle)
    return f"NVML has no device with UUID {uuid} ({device})"


def instant_power_mw(nvml: ModuleType, handle: Any) -> int | None:
    """NVML_FI_DEV_POWER_INSTANT in mW, None where the binding or the driver lacks the field."""
    field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
    values = None if field is None else nvml_query(nvml, handle, ("nvmlDeviceGetFieldValues", [field]))
    if not values or values[0].nvmlReturn != nvml.NVML_SUCCESS:
        return None
    return getattr(values[0].value, _VALUE_MEMBERS[values[0].valueType])


def average_power_mw(nvml: ModuleType, handle: Any) -> int | None:
    """nvmlDeviceGetPowerUsage in mW: on Ampere and newer a trailing average over about 1 s."""
    return nvml_query(nvml, handle, ("nvmlDeviceGetPowerUsage",))


def energy_counter_period_s(nvml: ModuleType, handle: Any, duration_s: float = 1.5,
                            clock: Callable[[], float] = time.perf_counter, changes: int = 10) -> float | None:
    """How often the board's total-energy counter (nvmlDeviceGetTotalEnergyConsumption) updates:
    the median time between changes of its value, polled back to back for `duration_s` or until it
    has changed `changes` times.

    Counter energy is exact to about one period at each end of the timed loop, so this says how
    long a loop must be for `energy_source = "counter"` to be trusted. None where the counter is
    not reported or changed fewer than twice (an idle board still draws power, so it moves).
    `nvml` and `handle` come from `nvml_device`; `clock` is injectable for tests.
    """
    last = nvml_query(nvml, handle, ("nvmlDeviceGetTotalEnergyConsumption",))
    if last is None:
        return None
    changed_at: list[float] = []
    start = clock()
    while (now := clock()) - start < duration_s and len(changed_at) < changes:
        value = nvml_query(nvml, handle, ("nvmlDeviceGetTotalEnergyConsumption",))
        if value is not None and value != last:
            changed_at.append(now)
            last = value
    if len(changed_at) < 2:
        return None
    return statistics.median(b - a for a, b in itertools.pairwise(changed_at))


@dataclass(frozen=True)
class PowerSample:
    """One poll of the board; a field is None where the board does not report it."""

    power_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temp_c: int | None
    util_pct: int | None
    throttle_mask: int | None


def empty_columns(note: str) -> dict:
    """All power columns None, with the reason."""
    return values("power", power_note=note)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _max(values: list[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


class PowerMonitor:
    """Polls one NVML device between `start()` and `stop()`; `columns()` turns it into row columns.

    Whether power is instant or averaged is settled once, here, so a row never mixes the two.
    """

    def __init__(self, nvml: ModuleType, handle: Any, counter_period_s: float | None = None) -> None:
        self._nvml = nvml
        self._handle = handle
        instant = instant_power_mw(nvml, handle) is not None
        self.source = "instant" if instant else "average"
        self.counter_period_s = counter_period_s
        self._power_mw = instant_power_mw if instant else average_power_mw
        self._sampler = BackgroundSampler(self._poll, POWER_INTERVAL_S, edges=False)
        self._energy_mj: list[int | None] = []
        self._span: list[float] = []
        self._samples: list[tuple[float, PowerSample]] = []

    @property
    def floor_s(self) -> float:
        """How long a loop with power must time (see the module docstring)."""
        if self.source == "average" or self.counter_period_s is None:
            return POWER_MIN_S
        return min(POWER_MIN_S, max(POWER_FLOOR_MIN_S, ENERGY_PERIODS * self.counter_period_s))

    def _read(self, *calls: tuple) -> Any:
        return nvml_query(self._nvml, self._handle, *calls)

    def _poll(self) -> PowerSample:
        nvml = self._nvml
        milliwatts = self._power_mw(nvml, self._handle)
        util = self._read(("nvmlDeviceGetUtilizationRates",))
        return PowerSample(
            power_w=None if milliwatts is None else milliwatts / 1e3,
            sm_clock_mhz=self._read(("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)),
            mem_clock_mhz=self._read(("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM)),
            temp_c=self._read(("nvmlDeviceGetTemperatureV", nvml.NVML_TEMPERATURE_GPU),
                              ("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)),
            util_pct=None if util is None else util.gpu,
            throttle_mask=self._read(("nvmlDeviceGetCurrentClocksEventReasons",),
                                     ("nvmlDeviceGetCurrentClocksThrottleReasons",)),
        )

    def start(self) -> None:
        """Read the energy counter and start polling: call it right before the loop's first step."""
        self._energy_mj.append(self._read(("nvmlDeviceGetTotalEnergyConsumption",)))
        self._span.append(time.perf_counter())
        self._sampler.start()

    def stop(self) -> None:
        """Stop polling and read the energy counter again: right after the loop's final synchronise."""
        self._samples = self._sampler.stop()
        self._span.append(time.perf_counter())
        self._energy_mj.append(self._read(("nvmlDeviceGetTotalEnergyConsumption",)))

    def _energy_j(self) -> tuple[float | None, str | None]:
        """Energy over the loop and where it came from."""
        begin, end = self._energy_mj
        if begin is not None and end is not None:
            return (end - begin) / 1e3, "counter"
        watts = _mean([s.power_w for _, s in self._samples])
        if watts is None:
            return None, None
        return watts * (self._span[1] - self._span[0]), "integrated"

    def columns(self, images: int) -> dict:
        """Power columns for `images` images processed between start() and stop()."""
        samples = [s for _, s in self._samples]
        masks = [s.throttle_mask for s in samples if s.throttle_mask is not None]
        power = [s.power_w for s in samples]
        energy_j, source = self._energy_j()
        if source is None:
            note = "board reports neither energy nor power"
        elif not samples:
            note = f"no power sample: the loop was shorter than {POWER_INTERVAL_S * 1e3:g} ms"
        else:
            note = ""
        return values(
            "power",
            power_w_mean=_mean(power),
            power_w_max=_max(power),
            power_source=self.source if _mean(power) is not None else None,
            sm_clock_mhz=_mean([s.sm_clock_mhz for s in samples]),
            mem_clock_mhz=_mean([s.mem_clock_mhz for s in samples]),
            temp_c_max=_max([s.temp_c for s in samples]),
            gpu_util_pct=_mean([s.util_pct for s in samples]),
            throttle_reasons=decode_throttle(functools.reduce(operator.or_, masks)) if masks else None,
            energy_j_per_image=None if energy_j is None else energy_j / images,
            energy_source=source,
            energy_period_ms=None if self.counter_period_s is None else self.counter_period_s * 1e3,
            power_note=note,
        )


def power_monitor(device: torch.device) -> PowerMonitor | str:
    """A monitor for a CUDA device, or the reason there is none (CPU, no NVML, no handle, MIG)."""
    found = nvml_device(device)
    if isinstance(found, str):
        return found
    if str(device) not in _COUNTER_PERIODS:
        _COUNTER_PERIODS[str(device)] = energy_counter_period_s(*found, duration_s=1.0)
    return PowerMonitor(*found, counter_period_s=_COUNTER_PERIODS[str(device)])


# ---- for gpu-check ------------------------------------------------------------------------------


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def describe_nvml_mapping(index: int) -> dict:
    """How CUDA device `index` maps to NVML: `matched_by` "uuid" with NVML's UUID and name and the
    power source a row will use, or `matched_by` None with the reason (`note`)."""
    found = nvml_device(torch.device("cuda", index))
    if isinstance(found, str):
        return {"matched_by": None, "note": found}
    nvml, handle = found
    return {
        "matched_by": "uuid",
        "nvml_uuid": _text(nvml_query(nvml, handle, ("nvmlDeviceGetUUID",))),
        "nvml_name": _text(nvml_query(nvml, handle, ("nvmlDeviceGetName",))),
        "power_source": "instant" if instant_power_mw(nvml, handle) is not None else "average",
    }


def compare_power_readings(step: Callable[[], object], device: torch.device,
                           seconds: float = POWER_MIN_S) -> dict:
    """NVML's instant and averaged power readings, both polled every `POWER_INTERVAL_S` while `step`
    runs (synchronised each time) for `seconds`: their means and maxima in W, and the sample count.
    Under a steady load the two means agree and the average's maximum lags; `note` says why there
    is nothing to compare (no NVML device, MIG)."""
    found = nvml_device(device)
    if isinstance(found, str):
        return {"note": found}
    nvml, handle = found
    sampler = BackgroundSampler(lambda: (instant_power_mw(nvml, handle), average_power_mw(nvml, handle)),
                                POWER_INTERVAL_S, edges=False)
    sampler.start()
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            torch.cuda.synchronize(device)
    finally:
        samples = [reading for _, reading in sampler.stop()]
    instant = [None if mw is None else mw / 1e3 for mw, _ in samples]
    average = [None if mw is None else mw / 1e3 for _, mw in samples]
    return {"instant_w_mean": _mean(instant), "instant_w_max": _max(instant),
            "average_w_mean": _mean(average), "average_w_max": _max(average), "samples": len(samples)}
