"""The report's Memory section: the predicted peak CUDA memory of every cell (any device), against the
measured peak on CUDA, and the largest batch predicted to fit common cards (bench.counting.memory).

On a CPU run the predicted peak is the memory plot: RSS growth is too coarse to compare
implementations and stays in the summary table, labelled approximate.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from bench.columns import BY_NAME
from bench.counting.memory import CARDS, CUDA_CONTEXT_BYTES, MB, NOT_MODELLED, card_batches
from bench.models import get_entry
from bench.report.sections.perf import facet_lines
from bench.report.style import Plot, encode, impl_palette, skipped, theme
from bench.report.tables import Table, fmt
from bench.results.analysis import has_values

PREDICTED = "mem_predicted_mb"
MEASURED = "mem_peak_alloc_mb"
_CAPTION = f"Predicted from fake tensors, eager step, CUDA allocator rounding; {NOT_MODELLED}."


def predicted(configs: pd.DataFrame) -> Plot:
    """Predicted peak CUDA memory vs batch size, per (arch, mode), whatever device the run used."""
    title = "Predicted peak CUDA memory vs batch size"
    if not has_values(configs, PREDICTED):
        return skipped("memory_predicted", title, "No predicted memory in this run (rows from before the column).")
    return facet_lines(configs, PREDICTED, "memory_predicted", title, _CAPTION)


def relative_errors(configs: pd.DataFrame) -> pd.Series:
    """predicted / measured - 1 of the eager configurations measured on CUDA (compiled ones are
    predicted as eager, so they are left out)."""
    both = configs[(configs["compile"] == "none") & configs[PREDICTED].notna() & configs[MEASURED].notna()]
    return both[PREDICTED] / both[MEASURED] - 1


def predicted_vs_measured(configs: pd.DataFrame) -> Plot:
    """Measured against predicted peak allocated memory of eager CUDA configurations, with y = x and
    a 10% band."""
    title = "Predicted vs measured peak CUDA memory"
    if not (has_values(configs, MEASURED) and has_values(configs, PREDICTED)):
        return skipped("memory_check", title, "No CUDA memory measurement in this run: predicted only.")
    errors = relative_errors(configs)
    if errors.empty:
        return skipped("memory_check", title, "No eager CUDA configuration: compiled cells are predicted as eager.")
    theme()
    data = configs.loc[errors.index]
    palette = impl_palette(data["impl"])
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.scatterplot(data=data, x=PREDICTED, y=MEASURED, hue="impl", palette=palette, hue_order=list(palette),
                    style="mode", ax=ax)
    low, high = data[[PREDICTED, MEASURED]].min().min() * 0.8, data[[PREDICTED, MEASURED]].max().max() * 1.25
    for factor, style in ((1.0, "-"), (0.9, ":"), (1.1, ":")):
        ax.plot([low, high], [low * factor, high * factor], style, color="grey", linewidth=1)
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
           xlabel=BY_NAME[PREDICTED].axis_label(), ylabel=BY_NAME[MEASURED].axis_label())
    caption = (f"Eager configurations; dotted lines are ±10%. Error predicted/measured - 1: median "
               f"{errors.median():+.1%}, worst {errors.loc[errors.abs().idxmax()]:+.1%}. {_CAPTION}")
    return encode(fig, "memory_check", title, caption)


def largest_batches(configs: pd.DataFrame, impl: str = "rv") -> Table:
    """Largest batch predicted to fit each card of `CARDS`, per arch x mode x precision of the run,
    at each model's default image size, with the family's optimizer.

    Costs two fake traces per row (seconds each), so it covers only what the run measured.
    """
    table = Table(["arch", "mode", "precision", *(card for card, _ in CARDS)],
                  note=f"{impl} implementation, family optimizer, each model's default input size; the card's "
                       f"memory less {CUDA_CONTEXT_BYTES // MB} MiB for the CUDA context. {_CAPTION}")
    rows = configs[configs["impl"] == impl][["arch", "mode", "precision"]].drop_duplicates()
    for arch, mode, precision in rows.itertuples(index=False):
        size = get_entry(arch, impl).image_size
        table.rows.append([arch, mode, precision, *map(fmt, card_batches(arch, impl, size, precision, mode).values())])
    return table
