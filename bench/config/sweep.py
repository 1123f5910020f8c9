"""Sweep specs: load a preset, apply command-line overrides, expand into validated cells.

A preset (bench/config/presets/<name>.toml) holds the timing config, the number of rounds and one or
more `[[sweep]]` blocks; each block is a cartesian product of axes. Blocks exist because a
useful GPU sweep is not one product (compile and train cells need fewer batch sizes than eager
inference). Everything is validated here, before a run directory exists, so bad input fails
with one message and nothing written.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from dataclasses import dataclass, field

from bench.config.backends import BACKENDS, DEFAULT_BACKEND, precision_problem, problem
from bench.config.cell import DEFAULT_OPTIMIZER, IMPLS, Cell, validate
from bench.config.presets import PRESET_DIR, list_presets
from bench.errors import UsageError
from bench.hardware.device import check_capability, cuda_count
from bench.models import FAMILY_NAMES, list_archs, list_entries
from bench.precisions import PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib


# Axes of a [[sweep]] block, with the default used when a block leaves one out. `models` and
# `batch_sizes` have no default. `image_size = 0` means each model's default input size.
# `channels_last` lists the model families ("resnet", "vit") that run in NHWC. `optimizers` apply to
# train and finetune cells (inference cells run none; a block's inference cells are not repeated per
# optimizer); blocks of runs from before the axis existed lack it and get its default. `backends`
# (bench.config.backends) other than eager join the block's inference cells without compile, in NCHW (`expand`).
BLOCK_DEFAULTS: dict[str, object] = {
    "impls": list(IMPLS),
    "image_size": 0,
    "precisions": ["fp32"],
    "compile": ["none"],
    "backends": [DEFAULT_BACKEND],
    "modes": ["inference"],
    "optimizers": [DEFAULT_OPTIMIZER],
    "channels_last": [],
}
BLOCK_REQUIRED = ("models", "batch_sizes")
FAMILIES = FAMILY_NAMES  # what `channels_last` may list


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and to time (bench.measure.timing applies it); presets set these by name.

    The timed loop runs at least `min_iters` steps and `min_s` seconds, at most `max_iters` steps, and
    in between stops once the median step time is known to ±`target_rel_ci` (a share: 0.01 is ±1%),
    or at `max_s` without converging (bench.measure.timing.StoppingRule). `target_rel_ci = None` is
    the fixed rule, stop at the minima: what runs from before the adaptive rule recorded (their
    config.json has no target), and what steps whose count is the point use.

    Power: a cell that samples power (a CUDA device NVML can read) times for at least the floor its
    board's readings need (bench.measure.power.power_floor_s), whatever the other fields say.
    `power = false` turns sampling, and so that floor, off: the runner's max-batch probes time exactly
    one step this way. `power_min_batch` samples only cells of at least that batch size: at small
    batches the board idles between kernels and the reading says little, so a preset can keep the
    floor for the batches whose power is worth reporting.

    `process_time` times CPU steps in the process's CPU time (`time.process_time`) instead of wall time:
    time other jobs take from the machine does not count, so runs made on shared CI runners compare
    over time (`rvbench history`). With one torch thread (OMP_NUM_THREADS=1) a step's CPU time is its
    latency on an idle core; with more it is the threads' sum. CUDA steps are timed by events either way.
    """

    warmup_iters: int = 3
    warmup_s: float = 0.5
    min_iters: int = 10
    min_s: float = 0.2
    max_iters: int = 100_000
    max_s: float = 10.0
    target_rel_ci: float | None = 0.01
    power: bool = True
    power_min_batch: int = 1
    process_time: bool = False

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 0, got {getattr(self, name)}" for name in
                    ("warmup_iters", "warmup_s", "min_iters", "min_s") if getattr(self, name) < 0]
        problems += [f"{name} must be > 0, got {getattr(self, name)}" for name in ("max_iters", "max_s")
                     if getattr(self, name) <= 0]
        if self.target_rel_ci is not None and not 0 < self.target_rel_ci < 1:
            problems.append(f"target_rel_ci must be a share between 0 and 1 (0.01 is ±1%), got {self.target_rel_ci}")
        if self.min_iters > self.max_iters:
            problems.append(f"min_iters {self.min_iters} > max_iters {self.max_iters}")
        if self.min_s > self.max_s and self.target_rel_ci is not None:  # the fixed rule stops at min_s
            problems.append(f"min_s {self.min_s} > max_s {self.max_s}")
        if problems:
            raise UsageError("timing: " + "; ".join(problems))

    def no_power(self, batch_size: int) -> str:
        """Why a cell of `batch_size` samples no power under this config; "" when it may (the device
        may still have none to read, bench.measure.power says so)."""
        if not self.power:
            return "power not sampled: timing power = false"
        if batch_size < self.power_min_batch:
            return f"power not sampled below batch {self.power_min_batch} (timing power_min_batch)"
        return ""


@dataclass
class SweepSpec:
    """A resolved sweep: what config.json records and what `--resume` reloads."""

    preset: str
    device: str
    rounds: int
    timing: dict
    sweeps: list[dict]
    find_max_batch: bool = False
    skipped_pairs: list[list[str]] = field(default_factory=list)
    skipped_backends: list[list[str]] = field(default_factory=list)  # [backend, precision, why]: see `expand`

    def to_json(self) -> dict:
        """Plain dict for config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "config.json") -> "SweepSpec":
        """Inverse of `to_json` (extra keys such as the cell count are ignored).

        The file may be damaged or foreign, so its shape and types are checked here (UsageError
        naming `where`); names and numbers are then checked by `expand`, as for command-line flags.
        """
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}; not a run's config")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UsageError(f"{where}: missing {', '.join(missing)}; not a run's config")
        for key, kind in _SPEC_TYPES.items():
            if key in data and not _is(data[key], kind):
                raise UsageError(f"{where}: {key} must be {kind.__name__}, got {data[key]!r}")
        if data["rounds"] < 1:
            raise UsageError(f"{where}: rounds must be >= 1, got {data['rounds']}")
        if "target_rel_ci" not in data["timing"]:  # a run from before the adaptive rule: the fixed rule it used
            data = {**data, "timing": {**data["timing"], "target_rel_ci": None}}
        for name, value in data["timing"].items():
            kind = bool if name in _TIMING_SWITCHES else float
            if not (_is(value, kind) or (name == "target_rel_ci" and value is None)):
                raise UsageError(f"{where}: timing {name} must be {'true or false' if kind is bool else 'a number'}, "
                                 f"got {value!r}")
        if not data["sweeps"]:
            raise UsageError(f"{where}: sweeps is empty")
        for i, block in enumerate(data["sweeps"]):
            _check_axes(block, f"{where} sweep block {i}")
            _check_block(block, f"{where} sweep block {i}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# TimingConfig's on/off fields; the others are numbers.
_TIMING_SWITCHES = {f.name for f in dataclasses.fields(TimingConfig) if f.type == "bool"}
# The JSON type of each SweepSpec field (float: any number).
_SPEC_TYPES = {"preset": str, "device": str, "rounds": int, "timing": dict, "sweeps": list,
               "find_max_batch": bool, "skipped_pairs": list, "skipped_backends": list}


def _is(value: object, kind: type) -> bool:
    """isinstance for JSON values: a bool is no number, and an int is a float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def _check_axes(block: object, where: str) -> None:
    """UsageError unless `block` is an object whose axes are lists (`models` may be "all") and whose
    image_size is an integer; the values themselves are checked by `expand`."""
    if not isinstance(block, dict):
        raise UsageError(f"{where}: expected an object, got {block!r}")
    for axis, value in block.items():
        ok = _is(value, int) if axis == "image_size" else _is(value, list) or (axis == "models" and value == "all")
        if not ok:
            raise UsageError(f"{where}: {axis} has the wrong type: {value!r}")


def load_preset(name: str) -> dict:
    """Parse bench/config/presets/<name>.toml, or raise UsageError naming the presets that exist."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.exists():
        raise UsageError(f"unknown preset {name!r}; valid: {', '.join(list_presets())}")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _check_block(block: dict, where: str) -> dict:
    unknown = set(block) - set(BLOCK_DEFAULTS) - set(BLOCK_REQUIRED)
    if unknown:
        raise UsageError(f"{where}: unknown keys {sorted(unknown)}; valid: "
                         + ", ".join(list(BLOCK_REQUIRED) + list(BLOCK_DEFAULTS)))
    missing = [k for k in BLOCK_REQUIRED if k not in block]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}")
    for fam in block.get("channels_last", []):
        if fam not in FAMILIES:
            raise UsageError(f"{where}: unknown family {fam!r} in channels_last; valid: {', '.join(FAMILIES)}")
    return {**BLOCK_DEFAULTS, **block}


def build_spec(preset: str, device: str, overrides: dict, find_max_batch: bool = False) -> SweepSpec:
    """Load `preset` and replace axes by the non-None `overrides` in every block.

    `overrides` keys are block axes; `channels_last` may be a bool (True: every family, False:
    none). `rounds` overrides the preset's rounds. The device must already be resolved.
    """
    data = load_preset(preset)
    unknown = set(data) - {"description", "rounds", "timing", "sweep"}
    if unknown or "sweep" not in data:
        raise UsageError(f"preset {preset!r}: needs [[sweep]] blocks; unknown keys {sorted(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    rounds = given.pop("rounds", data.get("rounds", 1))
    if isinstance(given.get("channels_last"), bool):
        given["channels_last"] = list(FAMILIES) if given["channels_last"] else []
    blocks = [
        {**_check_block(block, f"preset {preset!r} sweep block {i}"), **given}
        for i, block in enumerate(data["sweep"])
    ]
    if rounds < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}")
    timing = timing_config(SweepSpec(preset, device, rounds, dict(data.get("timing", {})), blocks))
    return SweepSpec(preset=preset, device=device, rounds=rounds, timing=dataclasses.asdict(timing),
                     sweeps=blocks, find_max_batch=find_max_batch)


def timing_config(spec: SweepSpec) -> TimingConfig:
    """The spec's TimingConfig; unknown fields and values out of range are a UsageError."""
    names = [f.name for f in dataclasses.fields(TimingConfig)]
    unknown = set(spec.timing) - set(names)
    if unknown:
        raise UsageError(f"unknown timing keys {sorted(unknown)}; valid: {', '.join(names)}")
    return TimingConfig(**spec.timing)


def _archs(models: str | list[str]) -> list[str]:
    """The block's arch names; "all" (a preset's string or `--models all`) means every registered arch."""
    return list_archs() if models == "all" or list(models) == ["all"] else list(models)


def _check_devices(cells: list[Cell]) -> None:
    """UsageError when a CUDA device the cells name cannot run their precision (bf16 needs sm80+).

    Only checkable where CUDA is present: a spec for a GPU can be expanded anywhere, and the CLI
    has resolved (`resolve_device`) every device it runs on.
    """
    if not cuda_count():
        return
    for device, precision in dict.fromkeys((c.device, c.precision) for c in cells if c.device != "cpu"):
        check_capability(device, precision)


def _check_backends(block: dict) -> None:
    """UsageError for an unknown backend name in a block."""
    for backend in block.get("backends", BLOCK_DEFAULTS["backends"]):
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")


def _check_deployed(spec: SweepSpec, cells: list[Cell]) -> None:
    """UsageError for a backend other than eager with --find-max-batch, or that a block asks for but no cell got: none of the sweep's blocks
    has an inference cell without compile (what a backend needs; bench.config.backends.problem says why). A
    preset whose train or compile blocks have no such cell (gpu, gpu-smoke) is fine as long as another has."""
    if spec.find_max_batch and any(c.backend != DEFAULT_BACKEND for c in cells):
        raise UsageError("--find-max-batch searches eager PyTorch's memory, and a backend's is not measured; "
                         "run the backends without it")
    wanted = {b for block in spec.sweeps for b in block.get("backends", BLOCK_DEFAULTS["backends"])}
    ran = {c.backend for c in cells} | {backend for backend, _, _ in spec.skipped_backends}
    for backend in sorted(wanted - ran - {DEFAULT_BACKEND}):
        block = next(b for b in spec.sweeps if backend in b.get("backends", ()))
        mode = "inference" if "inference" in block["modes"] else block["modes"][0]
        compile_mode = "none" if "none" in block["compile"] else block["compile"][0]
        raise UsageError(problem(backend, mode=mode, compile_mode=compile_mode, channels_last=False,
                                 precision="fp32", device="cpu"))


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of the spec, validated, implementations interleaved round by round.

    Order: for each configuration (arch, mode, optimizer, precision, compile, backend, batch), for each round,
    for each impl -> A B C A B C, so drift on a shared machine hits every impl alike. (arch, impl)
    pairs that no library provides (torchvision has no vit_tiny/vit_small) are skipped and listed
    in `spec.skipped_pairs`. A backend other than eager joins the block's inference cells without compile,
    in NCHW (a backend no block has such a cell for is a UsageError); (backend, precision) pairs it does not compute in
    are skipped and listed, with why, in `spec.skipped_backends`. Raises UsageError on any bad name, number,
    image size the model cannot take (ViT: a multiple of the patch), precision the GPU lacks, backend package
    not installed, or an empty sweep: input that is bad up front must fail before the run starts, not become
    `skipped` rows.
    """
    cells: list[Cell] = []
    skipped: set[tuple[str, str]] = set()
    skipped_backends: dict[tuple[str, str], str] = {}
    for block in spec.sweeps:
        archs = _archs(block["models"])
        entries = {(e.arch, e.impl): e for e in list_entries(archs, list(block["impls"]))}
        for bs in block["batch_sizes"]:
            if not isinstance(bs, int) or bs < 1:
                raise UsageError(f"batch size must be an integer >= 1, got {bs!r}")
        _check_backends(block)
        optimizers = block.get("optimizers", BLOCK_DEFAULTS["optimizers"])
        backends = block.get("backends", BLOCK_DEFAULTS["backends"])
        axes = itertools.product(archs, block["modes"], optimizers, block["precisions"], block["compile"],
                                 backends, block["batch_sizes"])
        for arch, mode, optimizer, precision, compile_mode, backend, bs in axes:
            deployed = backend != DEFAULT_BACKEND
            if deployed and (mode, compile_mode) != ("inference", "none"):
                continue
            why = precision_problem(backend, precision) if precision in PRECISIONS else ""
            if why:
                skipped_backends[(backend, precision)] = why
                continue
            for rnd in range(spec.rounds):
                for impl in block["impls"]:
                    entry = entries.get((arch, impl))
                    if entry is None:
                        skipped.add((arch, impl))
                        continue
                    image_size = block["image_size"] or entry.image_size
                    cells.append(Cell(
                        arch=arch, impl=impl, batch_size=bs, image_size=image_size,
                        precision=precision, channels_last=not deployed and entry.family in block["channels_last"],
                        compile=compile_mode, backend=backend, mode=mode, device=spec.device, round=rnd,
                        optimizer=DEFAULT_OPTIMIZER if mode == "inference" else optimizer,
                    ))
    for cell in cells:
        validate(cell)
    _check_devices(cells)
    spec.skipped_pairs = sorted([list(p) for p in skipped])
    spec.skipped_backends = [[*pair, why] for pair, why in sorted(skipped_backends.items())]
    _check_deployed(spec, cells)
    if not cells:
        reasons = list(skipped_backends.values()) or ["no registered (arch, impl) pair matches; see `rvbench models`"]
        raise UsageError("the sweep has no cells: " + "; ".join(reasons))
    # A cell listed twice (overlapping blocks) would be measured twice under one id.
    return list(dict.fromkeys(cells))
