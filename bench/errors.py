"""Errors the command line turns into one clear message and an exit code (see README "Exit codes")."""

from __future__ import annotations

import errno
from pathlib import Path

# Exit code of a --cluster run that lost every Ray actor with cells left (its rows kept; --resume goes on).
EXIT_SLOTS_LOST = 1
# Exit code of a command stopped by a full disk (its data written before is kept).
EXIT_DISK_FULL = 3
# Exit code of a run whose HTML report failed (a bug in the report code): its data is kept.
EXIT_REPORT_FAILED = 4
# Exit code of a run that finished but measured no cell (every row oom, error, timeout or skipped).
EXIT_NOTHING_MEASURED = 5


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an impossible combination, a bad number.

    Raised before anything is written, so the CLI can print it and exit 2 with no traceback.
    """


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full file system or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A write failed for lack of space; everything written before it is kept.

    The one place that words a full disk: `resume` is the run directory to continue, if any.
    The CLI prints it as one line and exits EXIT_DISK_FULL.
    """

    def __init__(self, exc: OSError, resume: Path | None = None) -> None:
        where = exc.filename or "a file"
        then = f"continue with `rvbench run --resume {resume}`" if resume else "run the command again"
        super().__init__(f"disk full while writing {where}; free space and {then}")
