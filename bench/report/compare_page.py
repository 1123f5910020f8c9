"""The views of `rvbench compare`: the terminal table and the self-contained compare.html page.

Both show a bench.regress.compare.Comparison, regressions first (the order it sorts its cells in).
"""

from __future__ import annotations

from pathlib import Path

from bench.columns import speed_label
from bench.intervals import ci_text
from bench.regress.compare import Comparison
from bench.report.render import render
from bench.report.tables import Table
from bench.report.text import format_table
from bench.results import write_atomically

# B's throughput over A's, labelled as every ratio is (above 1: B is faster), and its 95% interval; the p50 change
# is B's median step time against A's in percent (positive: B is slower), the quantity the significance test and
# threshold judge.
SPEED = speed_label("A", subject="B")
SPEED_CI = "95% CI"


def comparison_text(cmp: Comparison) -> str:
    """Plain-text table for the terminal, regressions first, then the unmatched cells and a tally."""
    columns = ["config", "img/s A", "img/s B", SPEED, SPEED_CI, "p50 A ms", "p50 B ms", "p50 change", "p", "verdict"]
    rows = [
        [
            c.label, f"{c.throughput_a:,.1f}", f"{c.throughput_b:,.1f}", f"{c.speed:.3f}", ci_text(c.speed_ci),
            f"{c.p50_a:.3f}", f"{c.p50_b:.3f}", f"{c.change_pct:+.1f}%", f"{c.p_value:.1e}", c.verdict,
        ]
        for c in cmp.cells
    ]
    lines = [format_table(columns, rows, left=1, rule=True)]
    for title, labels in (("only in A", cmp.only_a), ("only in B", cmp.only_b)):
        lines += [f"{title}: {label}" for label in labels]
    lines += [f"not comparable: {label} (A: {a}, B: {b})" for label, a, b in cmp.broken]
    tally = ", ".join(f"{n} {v}" for v, n in cmp.counts().items())
    lines.append(
        f"{len(cmp.cells)} cells compared: {tally}; {len(cmp.only_a)} only in A, {len(cmp.only_b)} only in B, "
        f"{len(cmp.broken)} not comparable ({cmp.test}: p < {cmp.alpha:g}, and |change| >= {cmp.threshold_pct:g}%)"
    )
    if cmp.counts()["underpowered"]:
        lines.append(f"underpowered: too few samples for the test to ever reach p < {cmp.alpha:g}; collect more iterations")
    return "\n".join(lines)


def write_html(cmp: Comparison, out: Path) -> Path:
    """Render compare.html (same look as the run report, self-contained) and return its path."""
    table = Table(["config", "img/s A", "img/s B", SPEED, SPEED_CI, "p50 A (ms)", "p50 B (ms)", "p50 change", "p-value",
                   "verdict"])
    for c in cmp.cells:
        table.rows.append([
            c.label, f"{c.throughput_a:,.1f}", f"{c.throughput_b:,.1f}", f"{c.speed:.3f}x", ci_text(c.speed_ci),
            f"{c.p50_a:.3f}", f"{c.p50_b:.3f}", f"{c.change_pct:+.1f}%", f"{c.p_value:.1e}", c.verdict,
        ])
    broken = Table(["config", "status in A", "status in B"], [list(b) for b in cmp.broken])
    html = render(
        "compare.html.j2",
        title=f"rvbench compare · {cmp.run_a.name} vs {cmp.run_b.name}",
        cmp=cmp,
        counts=cmp.counts(),
        table=table,
        broken=broken,
        plot_count=0,
    )
    out = Path(out)
    write_atomically(out, lambda p: p.write_text(html, encoding="utf-8"))  # a full disk leaves no torn page
    return out
