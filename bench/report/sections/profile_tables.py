"""The report's per-profile detail tables: top operators, per-module time and FLOPs, per-phase memory.

One entry per profile summary (profiles/<arch>-<impl>/profile.json, the profile contract), shown
collapsed under the Profile section's plots. Summaries written before a field existed get a note.
"""

from __future__ import annotations

from bench.report.sections.profile import label
from bench.report.tables import Table, fmt

PHASES = ("forward", "backward", "optimizer")


def _top_ops(profile: dict) -> Table:
    """The profile's top operators (or kernels on CUDA) by device time per step, as many as it recorded."""
    table = Table(["operator", "category", "ms / step", "% of time", "calls / step"])
    for op in profile.get("top_ops", []):
        table.rows.append([
            op["name"], op["category"], fmt(op["ms"], 3), fmt(op["pct"], 1), fmt(op["calls_per_step"], 1),
        ])
    if not table.rows:
        table.note = "This profile recorded no operator table."
    return table


def _modules(profile: dict) -> Table:
    """Forward time of each canonical module group, its GFLOP per step and achieved TFLOP/s."""
    table = Table(["group", "forward ms / step", "GFLOP / step", "achieved TFLOP/s"])
    for row in profile.get("modules", []):
        table.rows.append([row["group"], fmt(row["ms"], 3), fmt(row["gflops"], 2), fmt(row["achieved_tflops"], 2)])
    table.note = profile.get("modules_note") or ("" if table.rows else "This profile has no per-module times.")
    return table


def _memory(profile: dict) -> Table:
    """Peak allocated memory in each phase of one step, or the reason there is none."""
    memory = profile.get("memory") or {}
    peaks = [memory.get(f"{phase}_mb") for phase in PHASES]
    table = Table([f"{phase} MB" for phase in PHASES])
    if any(peak is not None for peak in peaks):
        table.rows.append([fmt(peak, 1) for peak in peaks])
    table.note = memory.get("note") or ("" if table.rows else "This profile has no per-phase memory.")
    return table


def profile_details(profiles: list[dict]) -> list[dict]:
    """Per profile: its label and the operator, module and memory tables the report renders."""
    return [{"label": label(p), "top_ops": _top_ops(p), "modules": _modules(p), "memory": _memory(p)} for p in profiles]
