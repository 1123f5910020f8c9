"""The views of `rvbench bisect`: the terminal lines and trace table, and the self-contained bisect.html page."""

from __future__ import annotations

from pathlib import Path

from bench.intervals import ci_text
from bench.regress import DEFAULT_ALPHA
from bench.regress.bisect import Bisection, Trial
from bench.report.render import render
from bench.report.tables import Table
from bench.report.text import format_table
from bench.results import write_atomically

TRACE_COLUMNS = ["commit", "subject", "verdict", "test", "change", "speed ÷ good, 95% CI", "p", "seconds", "reason"]


def _row(trial: Trial) -> list[str]:
    d = trial.delta
    measured = ([d.verdict, f"{d.change_pct:+.1f}%", ci_text(d.speed_ci), f"{d.p_value:.1e}"] if d
                else ["–", "–", "–", "–"])
    return [trial.commit.sha[:12], trial.commit.subject, trial.verdict, *measured, f"{trial.seconds:.1f}",
            trial.reason]


def answer(b: Bisection) -> str:
    """The search's answer in one line: the first bad commit and its step, the candidates, or none."""
    if not b.first_bad:
        return f"no first bad commit: --bad {b.bad.sha[:12]} is not significantly slower than --good {b.good.sha[:12]}"
    if len(b.first_bad) > 1:
        return ("the first bad commit is one of " + ", ".join(c.sha[:12] for c in b.first_bad)
                + " (skipped commits hide which)")
    commit = b.first_bad[0]
    d = b.trial_of(commit).delta
    return (f"first bad commit {commit.sha[:12]} {commit.subject!r}: step {d.change_pct:+.1f}% "
            f"(speed ÷ good {d.speed:.3f}, 95% CI {ci_text(d.speed_ci)}, p {d.p_value:.1e})")


def bisect_text(b: Bisection) -> str:
    """The trace table, the skipped commits and the answer, for the terminal."""
    lines = [format_table(TRACE_COLUMNS, [_row(t) for t in b.trials], left=2, rule=True)]
    lines += [f"skipped {t.commit.sha[:12]}: the cell does not run there ({t.reason})"
              for t in b.trials if t.reason]
    lines.append(f"{answer(b)}; {len(b.trials)} steps over {len(b.commits)} commits")
    return "\n".join(lines)


def write_bisect_html(b: Bisection, out: Path, fail_pct: float) -> Path:
    """Render bisect.html (the run report's look, self-contained) and return its path."""
    html = render("bisect.html.j2", title=f"rvbench bisect · {b.label}", b=b, answer=answer(b),
                  table=Table(TRACE_COLUMNS, [_row(t) for t in b.trials]), alpha=DEFAULT_ALPHA,
                  fail_pct=fail_pct, plot_count=0)
    write_atomically(out, lambda p: p.write_text(html, encoding="utf-8"))  # a full disk leaves no torn page
    return out
