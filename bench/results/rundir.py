"""The run directory of every command that records rows (run, scale, transfer): its name, its lock and
its config.json, made the same way for all of them, so `rvbench report` and `--resume` find what they expect.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Callable

from bench.errors import DiskFull, UsageError, is_disk_full
from bench.results.store import write_atomically

LOCK_FILE = ".lock"
ENV_FILE = "env.json"


def new_run_dir(reports_dir: Path, label: str) -> Path:
    """Create RUN_DIR = REPORTS/runs/<time>-<host>-<label>, suffixed -2, -3, ... when taken.

    The mkdir itself claims the name (no exists-then-mkdir race), so two runs starting in the same
    second on one host get distinct directories."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0])
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host}-{label}"
    runs, n = reports_dir / "runs", 1
    while True:
        run_dir = runs / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise UsageError(f"cannot create the run directory under --out {reports_dir}: {exc.strerror}") from None


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold RUN_DIR/.lock (flock) until the process ends, so two runs never append to one directory.

    Returns the open lock file, which the caller keeps for the whole run. Raises UsageError,
    before anything is written, when another run holds it or the directory is not writable.
    """
    try:
        fh = open(run_dir / LOCK_FILE, "a")
    except OSError as exc:
        if is_disk_full(exc):
            raise
        raise UsageError(f"cannot write to {run_dir} ({exc.strerror}); a run goes on only in a writable "
                         "directory") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UsageError(f"run in progress in {run_dir} (another rvbench run holds its lock)") from None
    return fh


def write_config(run_dir: Path, config: dict) -> None:
    """Write RUN_DIR/config.json atomically; if even that fails, remove the new, empty run directory
    (UsageError, exit 2) so no half-made run is left for `--resume` to trip on."""
    try:
        write_atomically(run_dir / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        reason = DiskFull(exc) if is_disk_full(exc) else exc.strerror
        raise UsageError(f"cannot start the run in {run_dir} ({reason}); nothing written") from None


def env_recorder(run_dir: Path) -> Callable[[str, dict], None]:
    """The callback that records each slot's environment in RUN_DIR/env.json as the slot comes up.

    Every command that records rows records their environment this way (run: each slot; scale: rank 0 of the
    first job; transfer: its device). One slot: its env_* keys, as always. Several: the first slot's at the top level (what a reader of
    a one-device run looks for) and every slot's, named, under "slots". A resumed run keeps the
    env.json of its first invocation; every row carries the environment of the slot that ran it.
    """
    path = run_dir / ENV_FILE
    if path.exists():
        return lambda name, env: None
    envs: list[dict] = []

    def record(name: str, env: dict) -> None:
        envs.append({"slot": name, **env})
        content = {**envs[0], "slots": envs} if len(envs) > 1 else envs[0]
        write_atomically(path, lambda p: p.write_text(json.dumps(content, indent=2, default=str) + "\n"))

    return record
