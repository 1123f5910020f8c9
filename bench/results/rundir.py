"""The run directory of every command that records rows (run, scale, transfer): its name, its lock and
its config.json, made the same way for all of them, so `rvbench report` and `--resume` find what they expect.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
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


# How many names new_run_dir tries (the bare name, then -2, -3, ...) before it gives up: far more runs
# than start in one second on one host, and a bound on the search whatever the file system answers.
MAX_SUFFIX = 1000
# The folders each new run directory's start created above it (OUT, OUT/runs), deepest first, until its
# config.json is written: what `abandon_run_dir` removes with it when the start fails, so a failed start
# leaves nothing behind.
_MADE_FOR: dict[Path, list[Path]] = {}


def new_run_dir(reports_dir: Path, label: str) -> Path:
    """Create RUN_DIR = REPORTS/runs/<time>-<host>-<label>, suffixed -2, -3, ... when taken.

    The mkdir itself claims the name (no exists-then-mkdir race), so two runs starting in the same
    second on one host get distinct directories. UsageError when REPORTS/runs cannot be a directory
    (a file or a dangling link in the way, no permission) or no name is free; DiskFull when the disk is."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0])
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host}-{label}"
    runs = reports_dir / "runs"
    made = _make_folders(runs, reports_dir)
    for n in range(1, MAX_SUFFIX + 1):
        run_dir = runs / (name if n == 1 else f"{name}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            _remove_empty(made)
            if is_disk_full(exc):
                raise DiskFull(exc) from None
            raise UsageError(f"cannot create the run directory under --out {reports_dir}: {exc.strerror}") from None
        _MADE_FOR[run_dir] = made
        return run_dir
    _remove_empty(made)
    raise UsageError(f"cannot create the run directory under --out {reports_dir}: {name} and its "
                     f"{MAX_SUFFIX - 1} suffixed names are all taken")


def _make_folders(runs: Path, reports_dir: Path) -> list[Path]:
    """Make `runs` and whichever of its parents are missing; return those this call made, deepest first
    (one another run made at the same moment is not ours). UsageError naming the folder that cannot
    be a directory (a file or a dangling link in its place, no permission), DiskFull on a full disk."""
    missing = list(itertools.takewhile(lambda p: not p.is_dir(), (runs, *runs.parents)))
    made: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            made.insert(0, folder)
        except OSError as exc:
            if isinstance(exc, FileExistsError) and folder.is_dir():
                continue
            _remove_empty(made)
            if is_disk_full(exc):
                raise DiskFull(exc) from None
            if folder.is_symlink():
                raise UsageError(f"--out {reports_dir}: {folder} is a link to {os.readlink(folder)}, which is not "
                                 "a directory; make it one or give another --out") from None
            raise UsageError(f"cannot create the run directory under --out {reports_dir}: "
                             f"{exc.strerror}: {folder}") from None
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that is empty; one another run has filled since stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def abandon_run_dir(run_dir: Path) -> None:
    """Remove a run directory whose start failed, and the folders its start made above it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    _remove_empty(_MADE_FOR.pop(run_dir, []))


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold RUN_DIR/.lock (flock) until the process ends, so two runs never append to one directory.

    Returns the open lock file, which the caller keeps for the whole run. Raises UsageError,
    before anything is written, when another run holds it or the directory is not writable.
    """
    try:
        fh = open(run_dir / LOCK_FILE, "a")
    except OSError as exc:
        if run_dir in _MADE_FOR:  # a new run directory: its start failed
            abandon_run_dir(run_dir)
        if is_disk_full(exc):
            raise DiskFull(exc) from None
        raise UsageError(f"cannot write to {run_dir} ({exc.strerror}); a run goes on only in a writable "
                         "directory") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UsageError(f"run in progress in {run_dir} (another rvbench run holds its lock)") from None
    return fh


def write_config(run_dir: Path, config: dict) -> None:
    """Write RUN_DIR/config.json atomically; if even that fails, remove the new, empty run directory and
    the folders made for it (DiskFull, exit 3, on a full disk, else UsageError, exit 2), so no half-made
    run is left for `--resume` to trip on."""
    try:
        write_atomically(run_dir / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    except OSError as exc:
        abandon_run_dir(run_dir)
        if is_disk_full(exc):
            raise DiskFull(exc) from None
        raise UsageError(f"cannot start the run in {run_dir} ({exc.strerror}); nothing written") from None
    _MADE_FOR.pop(run_dir, None)  # started: from here on the directory is a run's, kept whatever happens


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
