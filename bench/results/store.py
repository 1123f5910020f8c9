"""The results store of a run directory: append-only jsonl while running, tidy tables at the end.

Rows are appended one json line per finished cell, flushed and fsynced, so a run killed at any
moment loses at most the cell in flight, and a failed append (a full disk) is cut back off, so
no line is ever left torn by a live writer. A row is a line that parses: one that lost only its
newline is kept, and only a line that does not parse is cut off as torn. `load` reads a finished
run (parquet) or an unfinished one (jsonl, skipping damaged lines with a warning); `load_run` is the
same for a directory given by a user.
`finalize` writes the tidy tables and the export in timm's benchmark-CSV layout (bench.results.timm);
`update_latest` points the reports directory's `latest` link at a run. Analysis lives in
bench.results.analysis.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import pandas as pd

from bench.columns import COLUMNS
from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import DEFAULT_OPTIMIZER
from bench.errors import UsageError, is_disk_full
from bench.results.timm import timm_table

SCHEMA_VERSION = 1

RESULTS_JSONL = "results.jsonl"
RESULTS_PARQUET = "results.parquet"
SAMPLES_JSONL = "samples.jsonl"

# The columns of a row and their order are declared in bench.columns (null where a row does not carry them).
COLUMN_ORDER = tuple(c.name for c in COLUMNS)


def _open_append(path: Path) -> BinaryIO:
    """Open a jsonl file for unbuffered appending, first mending a last line without its newline.

    A last line that parses is a whole row that lost only its newline: it is kept and the newline
    added. One that does not parse is a torn write of a killed run: it is cut off (`_read_jsonl`
    never counts it, so the cell runs again)."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            start = data.rfind(b"\n") + 1
            with open(path, "r+b") as fh:
                if _parses(data[start:]):
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"\n")
                else:
                    fh.truncate(start)
                os.fsync(fh.fileno())
    return open(path, "ab", buffering=0)


class ResultWriter:
    """Appends result rows and timing samples to a run directory, one durable line each."""

    def __init__(self, run_dir: Path) -> None:
        self._results = _open_append(run_dir / RESULTS_JSONL)
        self._samples = _open_append(run_dir / SAMPLES_JSONL)

    @staticmethod
    def _append(fh: BinaryIO, obj: dict) -> None:
        """Append one line durably, or none: on an OSError (a full disk) the partial line is cut off
        again and the error, naming the file, propagates."""
        data = memoryview((json.dumps(obj, default=str) + "\n").encode("utf-8"))
        start = os.fstat(fh.fileno()).st_size
        try:
            while data:
                data = data[fh.write(data):]
            os.fsync(fh.fileno())
        except OSError as exc:
            fh.truncate(start)
            exc.filename = exc.filename or fh.name
            raise

    def write(self, row: dict, samples_ms: list[float] | None) -> None:
        """Record one finished cell. Samples go first: the results row marks the cell as done."""
        if samples_ms:
            self._append(self._samples, {"cell_id": row["cell_id"], "samples_ms": samples_ms})
        self._append(self._results, row)

    def close(self) -> None:
        """Close both files."""
        self._results.close()
        self._samples.close()


def _parses(line: bytes) -> bool:
    """True when `line` is UTF-8 JSON, whatever its value: a line a writer finished."""
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


# The keys a line of each jsonl file must have, and their JSON types (a cell_id keys sets and dicts,
# so a null or a list there is damage, not a row).
_RESULT_KEYS: dict[str, type] = {"cell_id": str}
_SAMPLE_KEYS: dict[str, type] = {"cell_id": str, "samples_ms": list}
_JSON_TYPES = {str: "string", list: "list"}  # how a damage message names a required type


def _damage(line: bytes, required: dict[str, type]) -> str | None:
    """Why a jsonl line is not a record (None if it is): not UTF-8, not JSON, not an object, lacking
    a `required` key, or holding one of another type (a null or list cell_id)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8"
    except json.JSONDecodeError:
        return "not JSON"
    if not isinstance(obj, dict):
        return f"not an object: {json.dumps(obj)[:40]}"
    for key, kind in required.items():
        if key not in obj:
            return f"no {key!r}"
        if not isinstance(obj[key], kind):
            return f"{key!r} is {json.dumps(obj[key])[:40]}, not a {_JSON_TYPES[kind]}"
    return None


def _read_jsonl(path: Path, required: dict[str, type] = _RESULT_KEYS) -> list[dict]:
    """Parse a jsonl file of objects that each have the `required` keys; every other line is skipped
    with a warning naming its number and cause (an unterminated last line that does not parse: a torn
    write, which the next append cuts off)."""
    rows: list[dict] = []
    if not path.exists():
        return rows
    lines = path.read_bytes().split(b"\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cause = _damage(line, required)
        if cause is None:
            rows.append(json.loads(line))
            continue
        if lineno == len(lines) and not _parses(line):  # no newline after it
            cause = f"{cause}: torn write"
        warnings.warn(f"{path}: skipping line {lineno} ({cause})", stacklevel=3)
    return rows


def finished_cell_ids(run_dir: Path) -> set[str]:
    """Ids of the cells that already have a row: what `--resume` must not run again."""
    return {row["cell_id"] for row in _read_jsonl(Path(run_dir) / RESULTS_JSONL)}


def _tidy(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if not df.empty:
        # A cell is recorded once, but be robust to hand-merged files: the last row wins.
        df = df.drop_duplicates("cell_id", keep="last").reset_index(drop=True)
    extra = [c for c in df.columns if c not in COLUMN_ORDER]
    return with_cell_defaults(df.reindex(columns=list(COLUMN_ORDER) + extra))


def with_cell_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Rows from before the optimizer or the backend was a cell field ran the default one: say so, so their
    configurations still match (compare, resume, history) those of newer runs."""
    for name, default in (("optimizer", DEFAULT_OPTIMIZER), ("backend", DEFAULT_BACKEND)):
        df[name] = df[name].astype(object).fillna(default) if name in df else default
    return df


def current_parquet(run_dir: Path) -> Path | None:
    """The run's results.parquet when it holds every row, else None (read its results.jsonl instead).

    It does when it is at least as new as the jsonl: a run resumed after it was written (and perhaps
    killed again) has rows the parquet lacks. A run made without pyarrow has none.
    """
    parquet, jsonl = run_dir / RESULTS_PARQUET, run_dir / RESULTS_JSONL
    if parquet.exists() and (not jsonl.exists() or parquet.stat().st_mtime >= jsonl.stat().st_mtime):
        return parquet
    return None


def load(run_dir: str | Path) -> pd.DataFrame:
    """Read a run's results: results.parquet if the run finished (`current_parquet`), else its results.jsonl.

    Always has every column of bench.columns (null where absent), one row per cell.
    """
    run_dir = Path(run_dir)
    parquet, jsonl = current_parquet(run_dir), run_dir / RESULTS_JSONL
    if parquet is not None:
        try:
            return with_cell_defaults(pd.read_parquet(parquet))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            warnings.warn(f"{parquet} unreadable ({type(exc).__name__}); reading {jsonl.name} instead")
    return _tidy(_read_jsonl(jsonl))


def load_samples(run_dir: str | Path) -> dict[str, list[float]]:
    """Raw per-iteration step times of each ok cell, keyed by cell_id."""
    return {r["cell_id"]: r["samples_ms"] for r in _read_jsonl(Path(run_dir) / SAMPLES_JSONL, _SAMPLE_KEYS)}


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds a run's results (results.jsonl or results.parquet)."""
    return (path / RESULTS_JSONL).is_file() or (path / RESULTS_PARQUET).is_file()


def check_run_dir(run_dir: Path) -> None:
    """UsageError unless `run_dir`, a directory a user named, is a run directory with a results file:
    checked before anything else about it, so the message is about the directory."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory; give a run directory such as reports/latest")
    if not is_run_dir(run_dir):
        raise UsageError(f"{run_dir} has no results.jsonl or results.parquet: not a run directory")


def load_run(run_dir: Path) -> pd.DataFrame:
    """`load` for a directory a user named: UsageError when it is not a run directory with results."""
    check_run_dir(run_dir)
    df = load(run_dir)
    if df.empty:
        raise UsageError(f"{run_dir} has no result rows yet")
    return df


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file and rename: a kill mid-write leaves the old file or none, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        exc.filename = str(path)  # name the file the user knows, not the temporary one
        raise
    finally:
        tmp.unlink(missing_ok=True)


def finalize(run_dir: str | Path) -> pd.DataFrame:
    """Write results.csv, results_timm.csv and results.parquet from the jsonl; return the table.

    The parquet file is optional: an interpreter given with PYTHON= may lack pyarrow, and a column
    of mixed types can defeat it; `load` then reads the jsonl, which holds the same rows.
    """
    run_dir = Path(run_dir)
    df = _tidy(_read_jsonl(run_dir / RESULTS_JSONL))
    write_atomically(run_dir / "results.csv", lambda p: df.to_csv(p, index=False))
    write_atomically(run_dir / "results_timm.csv", lambda p: timm_table(df).to_csv(p, index=False))
    try:
        write_atomically(run_dir / RESULTS_PARQUET, lambda p: df.to_parquet(p, index=False))
    except Exception as exc:  # noqa: BLE001 - any parquet failure must not cost the run its report
        if is_disk_full(exc):
            raise  # the report would fail too: stop with the one disk-full line
        warnings.warn(f"results.parquet not written ({type(exc).__name__}: {exc}); results.csv and "
                      "results.jsonl hold the same rows")
    return df


def update_latest(reports_dir: Path, run_dir: Path) -> None:
    """Point reports_dir/latest at run_dir (relative link, replaced atomically); a real directory
    named `latest` is the user's, so it is left alone with a warning."""
    link = reports_dir / "latest"
    if link.is_dir() and not link.is_symlink():
        warnings.warn(f"{link} is a real directory, not a link; left as it is (run directory: {run_dir})")
        return
    tmp = reports_dir / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir.resolve(), reports_dir.resolve()))
    os.replace(tmp, link)
