"""How `run` and `scale` stop: on a signal (SIGTERM, a scheduler's stop, and Ctrl-C alike) and on a
full disk, each the same way in both, so what they keep and say cannot drift apart."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import DiskFull, ExitCode, is_disk_full


class Stop:
    """The signals that stop a command: `received` holds the first one's number; `measuring` is True
    while cells or jobs are measured, the only time a signal interrupts anything."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.measuring = False

    @contextmanager
    def measuring_now(self) -> Iterator[None]:
        """The block measures: the first signal raises KeyboardInterrupt inside it (catch it around
        the `with`, where the wrap-up goes on)."""
        try:
            self.measuring = True
            yield
        finally:
            self.measuring = False

    def exit_code(self) -> ExitCode:
        """INTERRUPTED (Ctrl-C) or TERMINATED (SIGTERM), as the first signal says."""
        return ExitCode(128 + (self.received[0] if self.received else signal.SIGINT))


@contextmanager
def signals_interrupt() -> Iterator[Stop]:
    """Make SIGTERM and SIGINT both stop the measuring the same clean way: the first one while
    `measuring` raises KeyboardInterrupt there. Any other is only noted (the first) and interrupts
    nothing: the wrap-up (killing the workers or ranks, joining threads, the tables, the report) runs
    to its end, so a second Ctrl-C neither loses index.html nor leaves threads running into the
    interpreter's shutdown (which aborted it: "Fatal Python error"). After a signal, later ones are
    ignored for the rest of the process, which is ending with the first one's exit code."""
    stop = Stop()

    def handler(signum: int, frame: object) -> None:
        if stop.received:
            return
        stop.received.append(signum)
        if stop.measuring:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            # Once stopped, the process is ending with the first signal's code: a later signal (a
            # second Ctrl-C after a quick wrap-up) must not kill it on its way out. SIG_IGN, not a Python
            # handler: the interpreter's shutdown puts Python handlers back to the default (death by the
            # signal, exit -2) and keeps SIG_IGN.
            signal.signal(sig, signal.SIG_IGN if stop.received else old)


@contextmanager
def disk_full_ends(reports_dir: Path | None, run_dir: Path, resume: bool) -> Iterator[None]:
    """A full disk inside the block becomes DiskFull (one line, exit 3; `rvbench run --resume` named
    when `resume`), after pointing REPORTS/latest at the run where the disk still allows it: the rows
    written before are kept."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        if reports_dir is not None:
            try_update_latest(reports_dir, run_dir)
        raise DiskFull(exc, resume=run_dir if resume else None) from None


def try_update_latest(reports_dir: Path, run_dir: Path) -> None:
    """update_latest, where the disk still allows it (a link needs little or no space)."""
    from bench.results import update_latest

    try:
        update_latest(reports_dir, run_dir)
    except OSError:
        pass
