"""The report's Profile section: operator-category shares per arch x impl, and the roofline.

Reads the `profiles/<arch>-<impl>/profile.json` summaries that `rvbench run --profile` leaves in the
run directory (their layout is the profile contract); draws nothing when there are none.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from bench.config.cell import IMPLS
from bench.profiling.opcats import CATEGORIES
from bench.report.style import IMPL_COLORS, Plot, encode, skipped, theme

# bench.profiling.opcats.CATEGORIES keys -> (legend label, colour)
CATEGORY_STYLE = {
    "convolution": ("convolution", "#4c72b0"),
    "matmul": ("matmul / linear", "#dd8452"),
    "attention": ("attention", "#8172b3"),
    "normalization": ("normalization", "#55a868"),
    "elementwise": ("elementwise / activation", "#c44e52"),
    "memory": ("memory copy / layout", "#937860"),
    "other": ("other", "#8c8c8c"),
}
assert set(CATEGORY_STYLE) == set(CATEGORIES), "every operator category needs a label and colour"
_ARCH_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def load_profiles(run_dir: Path) -> list[dict]:
    """Every profile summary of the run, ordered by arch then canonical impl order."""
    profiles = [json.loads(path.read_text()) for path in sorted(Path(run_dir).glob("profiles/*/profile.json"))]
    rank = {impl: i for i, impl in enumerate(IMPLS)}
    return sorted(profiles, key=lambda p: (p["arch"], rank.get(p["impl"], len(rank))))


def label(profile: dict) -> str:
    """How a profile is named in plots and tables: arch, impl, batch and precision."""
    return f"{profile['arch']} · {profile['impl']} · bs{profile['batch_size']} {profile['precision']}"


def categories(profiles: list[dict]) -> Plot:
    """Horizontal stacked bars: share of device time per operator category, one bar per profile."""
    title = "Where the time goes: operator categories"
    theme()
    fig, ax = plt.subplots(figsize=(10.5, 0.45 * len(profiles) + 1.6))
    labels = [label(p) for p in profiles]
    left = np.zeros(len(profiles))
    for name in CATEGORIES:
        shares = np.array([float(p["categories"].get(name, 0.0)) for p in profiles])
        if not shares.any():
            continue
        legend, color = CATEGORY_STYLE[name]
        ax.barh(labels, shares, left=left, color=color, label=legend, edgecolor="white")
        for y, (x0, share) in enumerate(zip(left, shares)):
            if share >= 6:
                ax.text(x0 + share / 2, y, f"{share:.0f}%", ha="center", va="center", fontsize=7, color="white")
        left += shares
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of device time (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="category")
    fig.tight_layout()
    return encode(fig, "profile_categories", title, "Self device time per operator category over the profiled steps.")


def roofline(profiles: list[dict]) -> Plot:
    """Log-log roofline: achieved TFLOP/s against arithmetic intensity, under each device ceiling."""
    title = "Roofline"
    placed = [p for p in profiles if p.get("roofline")]
    if not placed:
        return skipped("roofline", title, "No roofline: the profiled device is not in the known-device table (or is a CPU).")
    theme()
    fig, ax = plt.subplots(figsize=(11.0, 5.0))
    points = [(p, p["roofline"]) for p in placed]
    intensities = [r["intensity"] for _, r in points]
    x = np.logspace(np.log10(min(intensities) / 10), np.log10(max(intensities) * 10), 200)
    ceilings = sorted({(r["peak_tflops"], r["mem_bw_gbs"]) for _, r in points})
    for peak, bandwidth in ceilings:
        ax.plot(x, np.minimum(peak, bandwidth * x / 1000.0), color="black", linewidth=1.2)
        ridge = peak * 1000.0 / bandwidth
        ax.annotate(f"{peak:g} TFLOP/s, {bandwidth:g} GB/s", (x[-1], peak), ha="right", va="bottom", fontsize=8)
        ax.axvline(ridge, color="grey", linestyle=":", linewidth=0.8)
    arch_marker = {a: _ARCH_MARKERS[i % len(_ARCH_MARKERS)] for i, a in enumerate(sorted({p["arch"] for p in placed}))}
    for profile, r in points:
        ax.scatter(
            r["intensity"], r["achieved_tflops"], color=IMPL_COLORS.get(profile["impl"], "black"),
            marker=arch_marker[profile["arch"]], s=60, zorder=3, label=label(profile),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=2.0 * max(peak for peak, _ in ceilings))
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    caption = "Black: min(peak compute, bandwidth x intensity) for the device and precision; dotted: ridge point."
    return encode(fig, "roofline", title, caption)
