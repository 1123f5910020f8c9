"""`rvbench gpu-validate`: everything a short GPU reservation should run first, in one go, within
`TOTAL_S` on one H100/H200, its files written before that time is up.

The parts, in order, each a guarded child process (bench.checks.guard) with a declared budget:
1. gpu-check: the GPU self-checks (bench.checks.gpu), each check stopped at its own budget;
2. gpu-smoke: `rvbench run --preset gpu-smoke`, resnet50 and vit_base x rv/torchvision/timm,
   inference at batch 64 in torch-default and amp-bf16, one train cell each (its run directory,
   results and report);
3. crosscheck: the smoke run's cells timed again by timm benchmark.py's loop, a synchronise after
   every step (`rvbench crosscheck`), against our p50 and mean.
Then the files: OUT receives exactly `gpu-validate.json`, `gpu-validate.txt` and one `.tar.gz` of
the work directory (the gpu-check directories, the run directory as `rvbench run` lays it out, the
cross-check table and every log), within what a reservation brings back (`MAX_FILE_BYTES` a file):
the largest files (profiler traces first) are left out of the archive, and listed, until it fits.
The json and txt are rewritten after every part, so a reservation cut short still has them.

A budget is a ceiling, not an estimate; `budgets_fit` shows they add up, stops and packing included.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.checks.guard import GRACE_S, PartResult, python_argv, run_checks, run_part

TOTAL_S = 480.0  # 8 minutes, machine already started
PACK_S = 20.0  # kept for writing the archive and the last json
SMOKE_PRESET = "gpu-smoke"
MAX_FILE_BYTES = 16 * 2**20  # what a reservation brings back of one file
TRACE_SUFFIXES = (".json.gz", ".pt.trace.json")  # profiler traces: the first files an archive over the limit loses
# ... and what it always keeps: the small files that say what ran and what it measured.
KEEP = ("gpu-check.json", "gpu-check.txt", "config.json", "env.json", "results.jsonl", "results.csv",
        "crosscheck.csv", "summary.txt")
TAR_ENTRY_BYTES = 1024  # a member's header and padding in the archive, before compression
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Part:
    """A part of gpu-validate and its budget in seconds (the gpu-check part: its start-up and every
    check's budget, `check_budgets`), and the grace a stopped part has to write its files."""

    name: str
    budget_s: float
    what: str
    grace_s: float = GRACE_S  # between SIGTERM and SIGKILL when it is stopped


def check_budgets() -> dict[str, float]:
    """Each gpu-check check's budget, in the order they run (declared with the checks)."""
    from bench.checks.gpu import CHECKS

    return {name: check.budget_s for name, check in CHECKS.items()}


PARTS = (
    Part("gpu-check", 240.0, "the GPU self-checks, each stopped at its budget"),
    # A stopped sweep finalises its results and renders its report: more than a check needs.
    Part("gpu-smoke", 115.0, f"rvbench run --preset {SMOKE_PRESET}", grace_s=15.0),
    Part("crosscheck", 75.0, "the smoke run's cells in timm benchmark.py's loop (rvbench crosscheck)"),
)


def budgets_fit() -> float:
    """Seconds gpu-validate may take at most: the parts' budgets, each one's SIGTERM grace, packing.
    At most TOTAL_S (tests/test_gpu_validate.py)."""
    return sum(p.budget_s + p.grace_s for p in PARTS) + PACK_S


class Validation:
    """One gpu-validate: its work directory, OUT, the clock, and the files it keeps up to date."""

    def __init__(self, device: str, work: Path, out: Path, echo: Callable[[str], None] = print,
                 budgets: dict[str, float] | None = None) -> None:
        self.device, self.work, self.out = device, work, out
        self.budgets = check_budgets() if budgets is None else budgets
        self.started = time.monotonic()
        # A part stopped at this deadline still has its SIGTERM grace, and then the packing, in TOTAL_S.
        self.deadline = self.started + TOTAL_S - PACK_S - GRACE_S
        self.results: list[PartResult] = []
        self.lines: list[str] = []
        self._echo = echo
        self.archive: dict = {}

    def echo(self, line: str) -> None:
        """Print a line and keep it for gpu-validate.txt."""
        self._echo(line)
        self.lines.append(line)

    def run(self, parts: tuple[Part, ...] = PARTS, commands: dict[str, Callable[..., list[str]]] | None = None
            ) -> list[PartResult]:
        """Run the parts in order, each guarded. `commands` replaces a part's command (the tests'
        fakes): for gpu-check a function of (checks, attempt), for the others of nothing."""
        commands = commands or {}
        for part in parts:
            self.echo(f"== {part.name} ({part.what}): budget {part.budget_s:.0f} s, "
                      f"{self.deadline - time.monotonic():.0f} s left")
            result = PartResult(part.name, part.budget_s)
            log = self.work / f"{part.name}.log"
            make = commands.get(part.name)
            try:
                if part.name == "gpu-check":
                    run_checks(result, self.budgets, make or self._check_argv, log, self.deadline, self.echo)
                elif (argv := make() if make else self._argv(part.name)) is None:
                    result.status = "not run: the smoke run left no run directory"
                else:
                    run_part(result, argv, log, self.deadline - part.grace_s + GRACE_S, self.echo, part.grace_s)
            except KeyboardInterrupt:  # gpu-validate stopped by a signal: its child is stopped by now
                result.status = "stopped: signal"
                self.results.append(result)
                self.write()
                raise
            self.results.append(result)
            self.echo(f"== {part.name}: {result.status} in {result.seconds:.0f} s (budget {part.budget_s:.0f} s)")
            self.write()
        return self.results

    def _check_argv(self, names: list[str], attempt: int) -> list[str]:
        out = self.work / ("gpu-check" if attempt == 1 else f"gpu-check-{attempt}")
        return python_argv("gpu-check", "--device", self.device, "--only", ",".join(names), "--out", str(out))

    def smoke_run(self) -> Path | None:
        """The smoke run's directory, once it has one."""
        runs = sorted((self.work / "runs").glob("*/config.json"))
        return runs[-1].parent if runs else None

    def _argv(self, name: str) -> list[str] | None:
        """A part's command; None for the cross-check when the smoke run left nothing to check."""
        if name == "gpu-smoke":
            return python_argv("run", "--preset", SMOKE_PRESET, "--device", self.device, "--out", str(self.work))
        run_dir = self.smoke_run()
        return None if run_dir is None else python_argv("crosscheck", str(run_dir))

    def write(self) -> None:
        """gpu-validate.json and .txt into OUT (rewritten after every part)."""
        from bench.results.store import write_atomically

        elapsed = time.monotonic() - self.started
        report = {"schema_version": SCHEMA_VERSION, "device": self.device, "total_budget_s": TOTAL_S,
                  "seconds": elapsed, "parts": [asdict(r) for r in self.results], "archive": self.archive}
        write_atomically(self.out / "gpu-validate.json", lambda p: p.write_text(json.dumps(report, indent=1)))
        write_atomically(self.out / "gpu-validate.txt", lambda p: p.write_text("\n".join(self.lines) + "\n"))

    def summary(self) -> list[str]:
        """The seconds each part and check took, against its budget."""
        lines = []
        for result in self.results:
            lines.append(f"{result.name:<12} {result.status:<16} {result.seconds:6.0f} s of {result.budget_s:.0f} s")
            lines += [f"  {c['name']:<20} {c['verdict']:<8} {c['seconds']:6.0f} s of {self.budgets[c['name']]:.0f} s"
                      for c in result.checks]
        return lines

    def pack(self, name: str) -> Path:
        """The work directory as OUT/<name>.tar.gz (members under <name>/), at most MAX_FILE_BYTES:
        files are left out until it fits, profiler traces first, then the largest others, never the
        small files that say what ran (`KEEP`); `archive` lists them. The fit is judged on each file's
        compressed size, so the archive is written once (again only if that estimate was short)."""
        target = self.out / f"{name}.tar.gz"
        ours = {self.out / f for f in ("gpu-validate.json", "gpu-validate.txt")}
        files = sorted(p for p in self.work.rglob("*") if (p.is_file() or p.is_symlink()) and p not in ours
                       and not p.name.endswith(".tar.gz") and not p.name.startswith("."))
        estimate = {p: _compressed_bytes(p) for p in files}
        droppable = sorted((p for p in files if p.name not in KEEP), key=_drop_order, reverse=True)
        left_out: list[str] = []
        while True:
            while droppable and sum(estimate[p] + TAR_ENTRY_BYTES for p in files) > MAX_FILE_BYTES:
                dropped = droppable.pop(0)
                files.remove(dropped)
                left_out.append(str(dropped.relative_to(self.work)))
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with tarfile.open(tmp, "w:gz") as tar:
                for path in files:
                    tar.add(path, arcname=f"{name}/{path.relative_to(self.work)}", recursive=False)
            size = tmp.stat().st_size
            if size <= MAX_FILE_BYTES or not droppable:
                os.replace(tmp, target)
                break
            tmp.unlink()
            estimate = {p: e * size / max(1, sum(estimate[f] for f in files)) for p, e in estimate.items()}
        self.archive = {"file": target.name, "bytes": size, "members": len(files), "left_out": left_out}
        return target


def _compressed_bytes(path: Path) -> int:
    """A file's size once gzipped (a link: a tar header's worth)."""
    if path.is_symlink() or not path.is_file():
        return 0
    return len(zlib.compress(path.read_bytes(), 6))


def _drop_order(path: Path) -> tuple[bool, int]:
    """Which file an archive over the limit loses first: profiler traces, then the largest."""
    return path.name.endswith(TRACE_SUFFIXES), path.stat().st_size if path.is_file() else 0
