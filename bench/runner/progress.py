"""The sweep's progress bar on the terminal (a `bench.runner.runner.Progress`)."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, done: int) -> tqdm:
    """A bar over all jobs of the sweep (resumed runs start at the finished count), with ETA."""
    return tqdm(total=total, initial=done, unit="cell", dynamic_ncols=True)
