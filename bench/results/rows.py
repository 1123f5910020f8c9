"""A results row, built in one place for every command that records rows (run, scale, transfer).

Every row carries the same identity: the schema version, the run id, the cell id, the cell's configuration (the
fields of a `bench.config.cell.Cell`), its status and message; and, where the command has them, when it started
and how long it took, and the environment of the slot that ran it (bench.measure.env, collected once per slot;
a Ray job whose actor was lost never reached one). Each command adds its own
measured columns; a name bench.columns does not declare is refused, so no command can write a column that the
store, the analysis and the report do not know.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone

from bench.columns import BY_NAME
from bench.config.cell import Cell
from bench.results.store import SCHEMA_VERSION


def make_row(run_id: str, cell_id: str, cell: Cell, status: str, message: str = "", *,
             started: float | None = None, env: Mapping[str, object] | None = None, **columns: object) -> dict:
    """One results row of `cell` (as it was recorded: its device is the sweep's, not the slot's).

    `started` (a time.time() stamp) fills started_at and wall_s, the seconds from then to now; `env` is the
    slot's env_* columns; `columns` the command's own, which may override a configuration field (scale rows
    have mode ddp-train) but never the identity. ValueError for an undeclared column name.
    """
    row = {**(env or {}), **cell.config(), **columns, "schema_version": SCHEMA_VERSION, "run_id": run_id,
           "cell_id": cell_id, "status": status, "message": message}
    if started is not None:
        row["started_at"] = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
        row.setdefault("wall_s", round(time.time() - started, 3))
    undeclared = sorted(row.keys() - BY_NAME.keys())
    if undeclared:
        raise ValueError(f"row column(s) {undeclared} are not declared in bench.columns")
    return row
