"""The one plain-text table formatter of the terminal views (models, flops, run summary, compare).

Light on purpose (no pandas, no plotting): commands that only print a table import just this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

MISSING = "-"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decimals(value: float) -> int:
    """Decimals of the shortest repr of a float (0 in exponent notation)."""
    text = repr(float(value))
    return 0 if "e" in text or "." not in text else len(text) - text.index(".") - 1


def _column_texts(values: list[object]) -> list[str]:
    """One column's cells: MISSING for None and NaN, floats with the decimals of the column's most
    precise one (so they line up: 4.20 under 18.36), anything else as str()."""
    floats = [v for v in values if isinstance(v, float) and not _is_missing(v)]
    digits = max((_decimals(v) for v in floats), default=0)
    return [
        MISSING if _is_missing(v) else f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values
    ]


def format_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], *, left: int | None = None, rule: bool = False
) -> str:
    """Columns padded to their widest value and separated by two spaces; lines end without padding.

    The first `left` columns (all of them when None) are left-aligned, the rest right-aligned, so
    names read left to right and numbers line up on their last digit. Values are shown as
    `_column_texts` says. `rule` puts a line of dashes under the header.
    """
    cells = list(zip(*[_column_texts(list(column)) for column in zip(*rows)]))
    table = [list(columns)] + [list(row) for row in cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    n_left = len(columns) if left is None else left
    lines = [
        "  ".join(v.ljust(w) if i < n_left else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip()
        for line in table
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
