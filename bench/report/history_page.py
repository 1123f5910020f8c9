"""The views of `rvbench history`: the terminal's steps table and the self-contained history.html.

Both show a bench.regress.history.History, the largest regression first. The page adds a small plot per
arch × impl (each configuration's throughput over the runs in commit order, relative to its first run,
its steps marked and the runs where the environment changed ruled), a summary line per series, and for
each step the `rvbench run` command that measures its configuration and links to the two runs' reports.
"""

from __future__ import annotations

import os
from itertools import groupby
from pathlib import Path

import seaborn as sns

from bench.config.cell import config_label
from bench.intervals import ci_text
from bench.regress.changepoints import Point, Step, why
from bench.regress.history import History, Series
from bench.report.render import render
from bench.report.style import Plot, encode, facet_grid, theme
from bench.report.text import format_table
from bench.results import write_atomically

STEP_COLUMNS = ["series", "last run before", "commit", "first run after", "commit", "why", "throughput change", "p"]
MAX_TICKS = 12  # commit labels along a plot's x axis before they are thinned out


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "–"


def _why_text(step: Step) -> str:
    """The step's reason and the environment fields that changed, e.g. "environment (env_torch 2.5 → 2.6)"."""
    fields = ", ".join(f"{f} {step.before.env[f]} → {step.after.env[f]}" for f in step.changed)
    return f"{step.why} ({fields})" if fields else step.why


def history_text(history: History) -> str:
    """The steps table for the terminal, largest regression first, and a tally of the series' trends."""
    found = history.steps()
    rows = [[s.label, Path(step.before.run).name, _short(step.before.commit), Path(step.after.run).name,
             _short(step.after.commit), _why_text(step), f"{step.change_pct:+.1f}%", f"{step.p_value:.1e}"]
            for s, step in found]
    lines = [format_table(STEP_COLUMNS, rows, left=6, rule=True) if rows else "no step in any series"]
    trends = {t: sum(s.trend == t for s in history.series) for t in ("regressed", "improved", "flat")}
    lines.append(f"{len(history.series)} series over {len(history.runs)} runs, {len(found)} steps "
                 f"(Mann-Whitney U p < {history.alpha:g}, |change| >= {history.threshold_pct:g}%): "
                 + ", ".join(f"{n} {t}" for t, n in trends.items()) + " since their first run")
    return "\n".join(lines)


def _env_changes(points: list[Point]) -> list[tuple[float, tuple[str, ...]]]:
    """Between which consecutive runs of a series the environment changed (x halfway), and which fields."""
    return [((a.position + b.position) / 2, changed) for a, b in zip(points, points[1:]) if (changed := why(a, b)[1])]


def trend_plot(arch: str, impl: str, series: list[Series]) -> Plot:
    """One arch × impl: each configuration's throughput over the runs, relative to its first run."""
    theme()
    fig, (ax,) = facet_grid(1)
    machines = {s.machine for s in series}
    rules: dict[float, set[str]] = {}
    for s, color in zip(series, sns.color_palette("tab10", len(series))):
        x = [p.position for p in s.points]
        y = [p.throughput / s.points[0].throughput for p in s.points]
        label = config_label({k: v for k, v in s.config.items() if k not in ("arch", "impl")})
        ax.plot(x, y, marker="o", markersize=3.5, lw=1.4, color=color,
                label=f"{label} · {s.machine}" if len(machines) > 1 else label)
        for step in s.steps:
            at = (step.after.position, step.after.throughput / s.points[0].throughput)
            ax.plot(*at, "v" if step.regressed else "^", markersize=10, zorder=5,
                    color="#b03a2e" if step.regressed else "#1e8449")
            ax.annotate(f"{step.change_pct:+.1f}%", at, textcoords="offset points",
                        xytext=(6, -12 if step.regressed else 6), fontsize=8)
        for x_rule, changed in _env_changes(s.points):
            rules.setdefault(x_rule, set()).update(changed)
    for x_rule in rules:
        ax.axvline(x_rule, color="#5f6b76", ls="--", lw=0.9)
    points = {p.position: p for s in series for p in s.points}
    ticks = sorted(points)[:: max(1, -(-len(points) // MAX_TICKS))]
    labels = [points[t].commit[:7] if points[t].commit else Path(points[t].run).name[:16] for t in ticks]
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=7.5)
    ax.set_xlabel("run, in commit order (its commit)")
    ax.set_ylabel("throughput ÷ first run")
    ax.legend(fontsize=7, loc="best")
    changes = ", ".join(sorted(set().union(*rules.values())))
    caption = ("▼ a confirmed regression, ▲ an improvement (throughput change at the step)."
               + (f" Dashed rules: the environment changed ({changes})." if rules else ""))
    return encode(fig, f"history-{arch}-{impl}", f"{arch} · {impl}", caption)


def _link(run: str, out: Path) -> dict:
    """A run's name and the relative link to its report from the page, None when it has no index.html."""
    report = Path(run) / "index.html"
    href = os.path.relpath(report.resolve(), out.resolve().parent) if report.exists() else None
    return {"name": Path(run).name, "href": href}


def write_history(history: History, out: Path) -> Path:
    """Render history.html (the run report's look, self-contained) and return its path."""
    by_panel = groupby(sorted(history.series, key=lambda s: (s.config["arch"], s.config["impl"])),
                       key=lambda s: (s.config["arch"], s.config["impl"]))
    plots = [trend_plot(arch, impl, list(series)) for (arch, impl), series in by_panel]
    steps = [{"series": s.label, "before": _link(step.before.run, out), "after": _link(step.after.run, out),
              "commit_before": _short(step.before.commit), "commit_after": _short(step.after.commit),
              "change": f"{step.change_pct:+.1f}%", "ci": ci_text(step.speed_ci), "p": f"{step.p_value:.1e}",
              "why": _why_text(step), "regressed": step.regressed, "command": s.command}
             for s, step in history.steps()]
    series = [{"label": s.label, "runs": len(s.points), "first": f"{s.points[0].throughput:,.1f}",
               "last": f"{s.points[-1].throughput:,.1f}", "steps": len(s.steps), "trend": s.trend,
               "change": f"{s.change_pct:+.1f}%" if s.steps else "–"} for s in history.series]
    html = render("history.html.j2", title="rvbench history", history=history, plots=plots, steps=steps,
                  series=series, plot_count=len(plots))
    write_atomically(out, lambda p: p.write_text(html, encoding="utf-8"))  # a full disk leaves no torn page
    return out
