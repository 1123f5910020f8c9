"""Errors the command line turns into one clear message and an exit code (see README "Exit codes")."""

from __future__ import annotations

import errno
import signal
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Every exit code of `rvbench`, each declared once with its meaning.

    The meaning is the README's "Exit codes" table cell (Markdown; a test keeps the two equal), and
    `rvbench --help` lists the same text. Commands return these, never a bare number.
    """

    meaning: str

    def __new__(cls, code: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "done"
    FAILED = 1, ("`compare --fail-on-regression` tripped; `gpu-check`: a check failed; `gpu-validate`: a check "
                 "failed or was stopped for its budget, or a part failed (each listed); `crosscheck`: a cell "
                 "could not run; `bisect`: --bad is not significantly slower than --good; `profile`: the cell ran "
                 "out of memory (one line; try a smaller `--batch-size`); `run --cluster`: every Ray actor was "
                 "lost with cells left (rows kept; `--resume DIR`)")
    USAGE = 2, ("bad input (unknown name, bad flag, an empty value or list, damaged `config.json`, unwritable "
                "`--out`, a read-only run directory for `report` without `--out` or for `--resume`): one line, "
                "nothing written")
    DISK_FULL = 3, ("disk full: one line naming the file; rows written before are kept; free space and "
                    "`rvbench run --resume DIR`")
    REPORT_FAILED = 4, ("`run`, `scale`: the HTML report failed (a bug in the report code): one line; the "
                        "results (and `run`'s `summary.txt`, with the error) kept; `rvbench report DIR` rebuilds it")
    NOTHING_MEASURED = 5, ("`run`: no cell was measured (every row oom, error, timeout or skipped), `scale`: no "
                           "world size finished, `transfer`: no run finished (each diverged, ran out of memory or "
                           "failed), `crosscheck`: the run has no ok cell: one line; all rows kept")
    INTERRUPTED = 128 + signal.SIGINT, ("interrupted by Ctrl-C (SIGINT); finished cells kept, continue with "
                                        "`--resume`")
    TERMINATED = 128 + signal.SIGTERM, "stopped by SIGTERM; as 130"


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an impossible combination, a bad number.

    Raised before anything is written, so the CLI can print it and exit ExitCode.USAGE with no traceback.
    """


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full file system or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A write failed for lack of space; everything written before it is kept.

    The one place that words a full disk: `resume` is the run directory to continue, if any.
    The CLI prints it as one line and exits ExitCode.DISK_FULL.
    """

    def __init__(self, exc: OSError, resume: Path | None = None) -> None:
        where = exc.filename or "a file"
        then = f"continue with `rvbench run --resume {resume}`" if resume else "run the command again"
        super().__init__(f"disk full while writing {where}; free space and {then}")
