"""Power through NVML, against a fake pynvml module: this machine has no NVIDIA driver, so every
NVML answer here is a stand-in. The fake keeps the real binding's shapes where they matter (the
constants, `NVMLError`, and the ctypes field-value struct of nvidia-ml-py, which is installed)
so the code is checked against what nvidia-ml-py 13 really returns."""

from __future__ import annotations

import ctypes
import dataclasses
import sys
import time
import types
import warnings

import pynvml
import pytest
import torch

from bench.columns import names
from bench.config.cell import Cell
from bench.config.sweep import TimingConfig
from bench.measure import cell as measure
from bench.measure import power
from bench.measure.sampler import BackgroundSampler

UUID = "5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77"
CUDA0 = torch.device("cuda:0")


class FakeNvmlError(Exception):
    pass


def fake_nvml(*, drop: tuple[str, ...] = (), raises: tuple[str, ...] = (), instant_mw: int | None = None,
              init_fails: bool = False) -> types.ModuleType:
    """A pynvml stand-in for one board: 200 W averaged, fixed clocks, energy counter +1 J per read.

    The CUDA 14 successors (`...EventReasons`, `TemperatureV`) answer differently from the old
    queries, so a test can tell which one was used. `drop` removes functions from the module (a
    binding that lacks them: AttributeError), `raises` makes them raise NVMLError (a driver that
    refuses them). `instant_mw` makes NVML_FI_DEV_POWER_INSTANT answer.
    """
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError
    for name in ("NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_TEMPERATURE_GPU", "NVML_SUCCESS",
                 "NVML_FI_DEV_POWER_INSTANT", "NVML_DEVICE_MIG_ENABLE"):
        setattr(nvml, name, getattr(pynvml, name))
    calls = {"mj": 5_000, "inits": 0, "shutdowns": 0, "polls": 0}

    def init():
        if init_fails:
            raise FakeNvmlError("Driver Not Loaded")
        calls["inits"] += 1

    def shutdown():
        calls["shutdowns"] += 1

    def total_energy(handle):
        calls["mj"] += 1_000
        return calls["mj"]

    def power_usage(handle):
        calls["polls"] += 1
        return 200_000

    def field_values(handle, field_ids):
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        values[0].fieldId = field_ids[0]
        if field_ids[0] == pynvml.NVML_FI_DEV_POWER_INSTANT and instant_mw is not None:
            calls["polls"] += 1
            values[0].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            values[0].value.uiVal = instant_mw
        else:
            values[0].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    functions = {
        "nvmlInit": init,
        "nvmlShutdown": shutdown,
        "nvmlDeviceGetPowerUsage": power_usage,
        "nvmlDeviceGetFieldValues": field_values,
        "nvmlDeviceGetClockInfo": lambda h, kind: 1980 if kind == pynvml.NVML_CLOCK_SM else 2619,
        "nvmlDeviceGetTemperatureV": lambda h, sensor: 61,
        "nvmlDeviceGetTemperature": lambda h, sensor: 99,
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=90, memory=40),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0x4,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: 0x40,
        "nvmlDeviceGetTotalEnergyConsumption": total_energy,
    }

    def refusing(name):
        def refuse(*args):
            raise FakeNvmlError(f"Not Supported: {name}")
        return refuse

    for name, fn in functions.items():
        if name not in drop:
            setattr(nvml, name, refusing(name) if name in raises else fn)
    nvml.calls = calls
    return nvml


@pytest.fixture(autouse=True)
def fresh_process_nvml():
    """`process_nvml` caches for the life of a process; each test brings its own fake."""
    power.process_nvml.cache_clear()
    yield
    power.process_nvml.cache_clear()


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(power, "POWER_INTERVAL_S", 0.005)


def _monitor_columns(nvml: types.ModuleType, images: int = 10, polls: int = 3) -> dict:
    """Run a monitor until the fake has answered `polls` power readings (inside the window)."""
    monitor = power.PowerMonitor(nvml, handle=object())
    start = nvml.calls["polls"]  # the source probe in __init__ may have read power once
    monitor.start()
    deadline = time.monotonic() + 30
    while nvml.calls["polls"] - start < polls and time.monotonic() < deadline:
        time.sleep(0.005)
    monitor.stop()
    return monitor.columns(images)


def test_energy_from_the_counter_and_new_queries_preferred(fast_polls):
    cols = _monitor_columns(fake_nvml())
    assert cols["energy_source"] == "counter"
    assert cols["energy_j_per_image"] == pytest.approx(1.0 / 10)  # counter read at start and stop only
    assert (cols["power_w_mean"], cols["power_w_max"], cols["power_source"]) == (200.0, 200.0, "average")
    assert (cols["sm_clock_mhz"], cols["mem_clock_mhz"], cols["gpu_util_pct"]) == (1980, 2619, 90)
    # TemperatureV and ClocksEventReasons, not the queries removed in CUDA 14.
    assert cols["temp_c_max"] == 61
    assert cols["throttle_reasons"] == "sw_power_cap"
    assert cols["power_note"] == ""


def test_old_queries_where_the_binding_lacks_the_new_ones(fast_polls):
    nvml = fake_nvml(drop=("nvmlDeviceGetTemperatureV", "nvmlDeviceGetCurrentClocksEventReasons"))
    cols = _monitor_columns(nvml)
    assert cols["temp_c_max"] == 99
    assert cols["throttle_reasons"] == "hw_thermal_slowdown"


def test_binding_without_the_removed_queries(fast_polls):
    """nvidia-ml-py for CUDA 14 drops the old functions: AttributeError must not fail the cell."""
    nvml = fake_nvml(drop=("nvmlDeviceGetTemperature", "nvmlDeviceGetCurrentClocksThrottleReasons"))
    cols = _monitor_columns(nvml)
    assert cols["temp_c_max"] == 61
    assert cols["throttle_reasons"] == "sw_power_cap"


def test_refused_queries_fall_back_or_read_none(fast_polls):
    nvml = fake_nvml(raises=("nvmlDeviceGetTemperatureV", "nvmlDeviceGetCurrentClocksEventReasons",
                             "nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetUtilizationRates"),
                     drop=("nvmlDeviceGetFieldValues",))
    cols = _monitor_columns(nvml)
    assert cols["temp_c_max"] == 99  # TemperatureV refused: the old query answers
    assert cols["throttle_reasons"] is None and cols["gpu_util_pct"] is None
    assert cols["power_source"] == "average"


def test_instant_power_where_the_driver_has_the_field(fast_polls):
    cols = _monitor_columns(fake_nvml(instant_mw=350_000))
    assert cols["power_source"] == "instant"
    assert (cols["power_w_mean"], cols["power_w_max"]) == (350.0, 350.0)


def test_energy_integrated_without_counter(fast_polls):
    nvml = fake_nvml(raises=("nvmlDeviceGetTotalEnergyConsumption",))
    cols = _monitor_columns(nvml, images=4, polls=3)
    assert cols["energy_source"] == "integrated"
    # 200 W over a window that held at least 3 polls, each at least one interval after the last.
    assert cols["energy_j_per_image"] >= 200 * 3 * 0.005 / 4


def test_no_sample_at_the_window_edges():
    """Power must not sample the idle GPU before the loop starts or after it ends; RSS needs its edges."""
    probes = []
    for edges, expected in ((False, 0), (True, 2)):
        sampler = BackgroundSampler(lambda: probes.append(1), interval_s=60.0, edges=edges)
        sampler.start()
        assert len(sampler.stop()) == expected


def test_loop_shorter_than_one_poll_says_so(monkeypatch):
    monkeypatch.setattr(power, "POWER_INTERVAL_S", 60.0)
    monitor = power.PowerMonitor(fake_nvml(), handle=object())
    monitor.start()
    monitor.stop()  # at once: the first poll would come POWER_INTERVAL_S after start
    cols = monitor.columns(images=2)
    assert cols["power_w_mean"] is None and cols["power_source"] is None and cols["throttle_reasons"] is None
    assert cols["energy_source"] == "counter"
    assert "shorter than 60000 ms" in cols["power_note"]


def test_decode_throttle_reasons():
    assert power.decode_throttle(0) == ""
    assert power.decode_throttle(0x4 | 0x40) == "sw_power_cap,hw_thermal_slowdown"
    assert power.decode_throttle(0x1 | 0x10000) == "gpu_idle,0x10000"


@pytest.mark.parametrize("period_s, source, floor_s", [
    (0.02, "instant", 1.0),  # 50 updates of a 20 ms counter
    (0.001, "instant", power.POWER_FLOOR_MIN_S),  # a fast counter: ten power polls at the least
    (0.2, "instant", power.POWER_MIN_S),  # a slow one: never above POWER_MIN_S
    (None, "instant", power.POWER_MIN_S),  # no counter: POWER_MIN_S
    (0.02, "average", power.POWER_MIN_S),  # NVML's trailing 1-s average needs seconds whatever the counter
])
def test_the_power_floor_follows_the_energy_counter(period_s, source, floor_s):
    """Fake NVML boards (no GPU here): the floor is ENERGY_PERIODS counter updates, within its bounds."""
    nvml = fake_nvml(instant_mw=210_000) if source == "instant" else fake_nvml()
    monitor = power.PowerMonitor(nvml, object(), counter_period_s=period_s)
    assert monitor.source == source and monitor.floor_s == pytest.approx(floor_s)


def test_rows_with_power_time_at_least_three_seconds(monkeypatch):
    """A real CPU cell given a power monitor on a fake NVML board whose counter period is unknown: the
    timed loop it asks for runs at least POWER_MIN_S, uncapped, whatever the preset says (run here with
    the preset's own config, to stay quick), and the row carries the monitor's columns. The preset's
    `max_s` is below the floor (as the gpu preset's 1 s is below a slow counter's 3 s): the floor lifts it."""
    quick = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=2, min_s=0.0, max_iters=3, max_s=0.5)
    monkeypatch.setattr(measure, "power_monitor", lambda device: power.PowerMonitor(fake_nvml(), object()))
    asked = []
    real_time_callable = measure.time_callable

    def time_callable(fn, device, cfg, around_timed=None):
        asked.append(cfg)
        return real_time_callable(fn, device, quick, around_timed)

    monkeypatch.setattr(measure, "time_callable", time_callable)
    row = measure.measure_cell(Cell("resnet18", "rv", batch_size=1, image_size=32), quick)
    assert asked == [dataclasses.replace(quick, min_s=power.POWER_MIN_S, max_s=power.POWER_MIN_S,
                                         max_iters=sys.maxsize)]
    assert row["energy_source"] == "counter" and row["energy_j_per_image"] > 0


def _timed_configs(monkeypatch) -> tuple[list[TimingConfig], list[int]]:
    """Record the config each timed loop is asked for, and how many steps it ran; power comes from
    a fake NVML board, and the test fails if a monitor is opened where none should be."""
    monkeypatch.setattr(measure, "power_monitor", lambda device: power.PowerMonitor(fake_nvml(), object()))
    asked, steps = [], []
    real_time_callable = measure.time_callable

    def time_callable(fn, device, cfg, around_timed=None):
        asked.append(cfg)
        result = real_time_callable(fn, device, cfg, around_timed)
        steps.append(len(result.samples_ms))
        return result

    monkeypatch.setattr(measure, "time_callable", time_callable)
    return asked, steps


def test_max_batch_probes_time_one_step_without_power(monkeypatch, tmp_path):
    """The runner's probe timing, as its worker rebuilds it from the request, opens no power monitor
    on a board NVML can read, so no power floor stretches it: exactly one timed step, and the
    row's power columns say why they are empty."""
    from bench.runner.runner import Runner, Slot

    preset = TimingConfig(warmup_iters=3, warmup_s=0.5, min_iters=10, min_s=1.0, max_iters=1000)
    probe = TimingConfig(**Runner(tmp_path, "run", preset, None, Slot("cpu", "cpu"))._probe_timing)
    asked, steps = _timed_configs(monkeypatch)
    monkeypatch.setattr(measure, "power_monitor", lambda device: pytest.fail("a probe opened a power monitor"))
    row = measure.measure_cell(Cell("resnet18", "rv", batch_size=2, image_size=32), probe)
    assert asked == [probe] and steps == [1] and row["n_iters"] == 1
    assert all(row[name] is None for name in names("power") if name != "power_note")
    assert row["power_note"] == "power not sampled: timing power = false"


def test_power_min_batch_samples_only_large_batches(monkeypatch):
    """A preset's `power_min_batch`: below it a cell keeps the preset's timing and has no power;
    at it the cell samples power and gets the floor."""
    quick = TimingConfig(warmup_iters=1, warmup_s=0.0, min_iters=2, min_s=0.0, max_iters=3, target_rel_ci=None,
                         power_min_batch=2)
    asked, steps = _timed_configs(monkeypatch)
    small = measure.measure_cell(Cell("resnet18", "rv", batch_size=1, image_size=32), quick)
    assert asked == [quick] and steps == [2]
    assert small["energy_j_per_image"] is None and "below batch 2" in small["power_note"]
    assert quick.no_power(2) == "" and TimingConfig().no_power(1) == ""


# ---- opening NVML and finding the device ------------------------------------------------------


def _board(monkeypatch, nvml: types.ModuleType, known: dict[str, object], uuid: str | None = UUID) -> None:
    """Install `nvml` as pynvml, with `known` UUID -> handle, and give cuda:0 the torch UUID `uuid`."""

    def by_uuid(name):
        if name not in known:
            raise FakeNvmlError("Not Found")
        return known[name]

    def by_index(index):
        raise AssertionError("the device must never be guessed by NVML index")

    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetHandleByIndex = by_index
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3")
    if uuid is not None:
        props.uuid = uuid
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)


def test_nvml_is_initialised_once_per_process_and_kept(monkeypatch):
    nvml = fake_nvml()
    _board(monkeypatch, nvml, {f"GPU-{UUID}": "board"})
    first, second = power.power_monitor(CUDA0), power.power_monitor(CUDA0)
    assert isinstance(first, power.PowerMonitor) and isinstance(second, power.PowerMonitor)
    first.start()
    first.stop()
    assert (nvml.calls["inits"], nvml.calls["shutdowns"]) == (1, 0)


def test_whole_gpu_matched_by_uuid(monkeypatch):
    nvml = fake_nvml()
    nvml.nvmlDeviceIsMigDeviceHandle = lambda h: ctypes.c_uint(0)  # what nvidia-ml-py 13 returns
    nvml.nvmlDeviceGetMigMode = lambda h: [0, 0]
    _board(monkeypatch, nvml, {f"GPU-{UUID}": "board"})
    assert power.nvml_device(CUDA0) == (nvml, "board")


@pytest.mark.parametrize(
    ("known", "is_mig_handle", "mig_mode"),
    [
        ({f"MIG-{UUID}": "slice"}, None, None),  # torch gives the slice's UUID: NVML names it MIG-...
        ({f"GPU-{UUID}": "slice"}, ctypes.c_uint(1), None),  # NVML says the handle is a MIG device
        ({f"GPU-{UUID}": "board"}, ctypes.c_uint(0), [1, 1]),  # torch gives the board's UUID, in MIG mode
    ],
)
def test_mig_slice_reports_no_power(monkeypatch, known, is_mig_handle, mig_mode):
    nvml = fake_nvml()
    if is_mig_handle is not None:
        nvml.nvmlDeviceIsMigDeviceHandle = lambda h: is_mig_handle
    if mig_mode is not None:
        nvml.nvmlDeviceGetMigMode = lambda h: mig_mode
    _board(monkeypatch, nvml, known)
    note = power.power_monitor(CUDA0)
    assert note == power.MIG_NOTE
    cols = power.empty_columns(note)
    assert all(cols[k] is None for k in names("power") if k != "power_note")
    assert "shared by all its slices" in cols["power_note"]


def test_unknown_uuid_is_reported_not_guessed_by_index(monkeypatch):
    _board(monkeypatch, fake_nvml(), {"GPU-00000000-0000-0000-0000-000000000000": "other board"})
    assert power.power_monitor(CUDA0) == f"NVML has no device with UUID {UUID} (cuda:0)"


def test_torch_without_uuid_is_reported(monkeypatch):
    _board(monkeypatch, fake_nvml(), {}, uuid=None)
    assert power.power_monitor(CUDA0) == "torch reports no UUID for cuda:0: its NVML device is unknown"


def test_nvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert power.open_nvml() == (None, "nvidia-ml-py (pynvml) is not installed")
        note = power.power_monitor(CUDA0)
    assert note == "nvidia-ml-py (pynvml) is not installed"
    cols = power.empty_columns(note)
    assert all(cols[k] is None for k in names("power") if k != "power_note")
    assert cols["power_note"] == note


def test_nvml_init_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_fails=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note = power.power_monitor(CUDA0)
    assert note == "NVML unavailable: Driver Not Loaded"


def test_no_power_on_cpu():
    assert power.power_monitor(torch.device("cpu")) == "no power measurement on cpu"


# ---- the energy counter's update period -----------------------------------------------------------


class SteppingCounter:
    """A fake board whose energy counter steps every `period_s` of a fake clock; every clock read
    advances the clock by `tick_s`, standing in for the time one poll takes."""

    def __init__(self, period_s: float, tick_s: float = 1e-4) -> None:
        self.period_s, self.tick_s, self.now = period_s, tick_s, 0.0
        self.nvml = fake_nvml()
        self.nvml.nvmlDeviceGetTotalEnergyConsumption = self.energy_mj

    def clock(self) -> float:
        self.now += self.tick_s
        return self.now

    def energy_mj(self, handle) -> int:
        return 1_000 * int(self.now / self.period_s)


@pytest.mark.parametrize("period_s", [0.02, 0.1])
def test_energy_counter_period_is_the_median_step(period_s):
    board = SteppingCounter(period_s)
    measured = power.energy_counter_period_s(board.nvml, object(), duration_s=1.5, clock=board.clock)
    assert measured == pytest.approx(period_s, abs=2 * board.tick_s)


def test_energy_counter_period_none_without_a_moving_counter():
    still = SteppingCounter(period_s=10.0)  # never steps twice within the 1.5 s polled
    assert power.energy_counter_period_s(still.nvml, object(), duration_s=1.5, clock=still.clock) is None
    refused = fake_nvml(raises=("nvmlDeviceGetTotalEnergyConsumption",))
    assert power.energy_counter_period_s(refused, object(), duration_s=1.5, clock=still.clock) is None


# ---- gpu-check's views ------------------------------------------------------------------------------


def test_describe_nvml_mapping(monkeypatch):
    nvml = fake_nvml(instant_mw=300_000)
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{UUID}"
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # older bindings return bytes
    _board(monkeypatch, nvml, {f"GPU-{UUID}": "board"})
    assert power.describe_nvml_mapping(0) == {
        "matched_by": "uuid", "nvml_uuid": f"GPU-{UUID}", "nvml_name": "NVIDIA H100 80GB HBM3",
        "power_source": "instant",
    }
    _board(monkeypatch, nvml, {f"MIG-{UUID}": "slice"})
    assert power.describe_nvml_mapping(0) == {"matched_by": None, "note": power.MIG_NOTE}


def test_compare_power_readings_polls_both_under_load(monkeypatch, fast_polls):
    nvml = fake_nvml(instant_mw=350_000)
    _board(monkeypatch, nvml, {f"GPU-{UUID}": "board"})
    steps = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: steps.append("synchronize"))
    readings = power.compare_power_readings(lambda: steps.append("step"), CUDA0, seconds=0.2)
    assert steps[:4] == ["step", "synchronize"] * 2  # each step is waited for before the next
    assert readings["samples"] >= 1
    assert (readings["instant_w_mean"], readings["instant_w_max"]) == (350.0, 350.0)
    assert (readings["average_w_mean"], readings["average_w_max"]) == (200.0, 200.0)
