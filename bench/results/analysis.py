"""The analysis every view of a run shares: which rows count, per-config medians, the best config.

Every summary of a run (summary.txt, the report's summary cards, `run --profile`) starts from the
same per-config medians and picks its best configuration with the same rule (`best_configs`), so
two views of one run can never name different winners. Ratios of rv to the reference
implementations, the memory column a run can show, and whether the machine was too busy for the
run's comparisons to hold (`contention_warning`) are defined here once for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from bench.columns import BY_NAME, METRICS, Column, names, speed_label
from bench.config.cell import config_keys, config_label

# A configuration on the run's device: what ratios and best configs are keyed on.
CONFIG_KEYS = config_keys(device=True)
REFERENCES = ("torchvision", "timm")

BEST_CONFIG_RULE = "highest median throughput over rounds among the ok cells of any implementation"
# A run warns that its comparisons are unreliable when at least this share of its ok cells (those with a
# verdict) was contended. At a fifth, about half of the three-way comparisons at a config (rv against
# torchvision and timm) involve a contended cell (1 - 0.8**3 = 0.49): the best config and the ratios are then
# as likely to reflect the load as the code. Below it, the cells' own `contended` flags say which to doubt.
CONTENDED_RUN_SHARE = 0.2


def is_max_batch_search(df: pd.DataFrame) -> pd.Series:
    """Rows of `--find-max-batch` searches: they say what fits, but their timing is a single probe."""
    return df["find_max_batch"].fillna(False).astype(bool)


def config_of(row: pd.Series, **fields: object) -> dict:
    """A row's configuration (CONFIG_KEYS) as plain Python values, plus `fields`: a Cell's arguments."""
    return {key: (row[key].item() if hasattr(row[key], "item") else row[key]) for key in CONFIG_KEYS} | fields


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Sweep rows (not max-batch searches) whose cell measured successfully: the rows every statistic uses."""
    return df[(df["status"] == "ok") & ~is_max_batch_search(df)]


def was_contended(df: pd.DataFrame) -> pd.Series:
    """Rows flagged `contended` (bench.measure.contention); False where the flag is False or null."""
    return df["contended"].astype("boolean").fillna(False).astype(bool)


def has_values(df: pd.DataFrame, column: str) -> bool:
    """Whether any row carries a measured (non-null) value in `column`."""
    return column in df.columns and bool(pd.to_numeric(df[column], errors="coerce").notna().any())


def config_medians(df: pd.DataFrame) -> pd.DataFrame:
    """Median over rounds of every METRICS column (the columns bench.columns marks `median`), per configuration and implementation (ok rows only).

    Rounds are repeats of one config, so every view shows their median. One row per config, impl
    and device (the CONFIG_KEYS and impl columns), sorted by them; `rounds` counts the ok rounds,
    `contended_rounds` those flagged contended. Metrics the results lack are NaN.
    """
    keys = config_keys(impl=True, device=True)
    ok = ok_rows(df)
    if ok.empty:
        return pd.DataFrame(columns=[*keys, *METRICS, "rounds", "contended_rounds"])
    numeric = ok[keys].assign(**{
        m: pd.to_numeric(ok[m], errors="coerce") if m in ok.columns else math.nan for m in METRICS
    }, contended_rounds=was_contended(ok) if "contended" in ok.columns else False)
    grouped = numeric.groupby(keys, dropna=False)
    out = grouped[list(METRICS)].median().reset_index()
    out["rounds"] = grouped.size().to_numpy()
    out["contended_rounds"] = grouped["contended_rounds"].sum().to_numpy().astype(int)
    return out


def best_configs(medians: pd.DataFrame, by: Sequence[str] = ("arch", "mode")) -> pd.DataFrame:
    """Per group of `by`, the medians row of its best configuration, sorted by `by`.

    The one rule (BEST_CONFIG_RULE): the highest median throughput over rounds of any
    implementation, whatever implementation that is; views then show (or profile) every
    implementation at that config (`at_config`). Ties go to the first config and impl in key
    order, so the choice does not depend on how `medians` happens to be sorted. `medians` is
    `config_medians` output, or a table with its columns (more columns or a row order of its own
    are fine).
    """
    ranked = medians[medians["throughput"].notna()].sort_values([*CONFIG_KEYS, "impl"], kind="stable")
    ranked = ranked.sort_values("throughput", ascending=False, kind="stable")
    return ranked.drop_duplicates(list(by)).sort_values(list(by), kind="stable").reset_index(drop=True)


def at_config(medians: pd.DataFrame, config: pd.Series) -> pd.DataFrame:
    """The rows of `medians` (one per implementation) measured at `config`'s CONFIG_KEYS."""
    return medians[(medians[CONFIG_KEYS] == config[CONFIG_KEYS]).all(axis=1)]


def best_label(best: pd.Series) -> str:
    """How the summaries name a best config: impl, batch, image size and variant (arch and mode head its group)."""
    return config_label({k: best[k] for k in config_keys(impl=True) if k not in ("arch", "mode")})


PEAK_MEMORY = BY_NAME["mem_peak_alloc_mb"]
RSS_MEMORY = BY_NAME["mem_rss_delta_mb"]


def memory_column(df: pd.DataFrame) -> Column | None:
    """The CUDA allocator's peak if the run measured it, else the CPU's RSS growth (approximate), else None.

    RSS growth is what a CPU can tell: too coarse to compare implementations, hence the label.
    """
    return next((m for m in (PEAK_MEMORY, RSS_MEMORY) if has_values(df, m.name)), None)


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """rv speed ÷ reference speed (`speed_label`: throughput ratio) per (config, round), then median and IQR per config.

    Ratios are taken within a round, where the implementations ran back to back, so slow drift
    of a shared machine cancels. Columns: CONFIG_KEYS, reference, ratio_median, ratio_iqr,
    n_rounds. Configs where rv or the reference has no ok row in a round are left out.
    """
    ok = ok_rows(df)
    per_impl = ok.pivot_table(index=[*CONFIG_KEYS, "round"], columns="impl", values="throughput", aggfunc="first")
    frames = []
    for ref in REFERENCES:
        if "rv" not in per_impl or ref not in per_impl:
            continue
        per_round = (per_impl["rv"] / per_impl[ref]).dropna().rename("ratio").reset_index()
        agg = per_round.groupby(CONFIG_KEYS, dropna=False)["ratio"].agg(
            ratio_median="median",
            ratio_iqr=lambda r: r.quantile(0.75) - r.quantile(0.25),
            n_rounds="count",
        )
        frames.append(agg.reset_index().assign(reference=ref))
    cols = [*CONFIG_KEYS, "reference", "ratio_median", "ratio_iqr", "n_rounds"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, mode): the best config (`best_configs`), its throughput, p50 latency, memory, rv ratios.

    The numbers are the best implementation's medians over rounds; the ratios are the median
    per-round rv speed ÷ reference speed at that config (None where rv or the reference did not run it).
    The memory column is headed as `memory_column` says, in MB; there is none if nothing was measured.
    """
    medians = config_medians(df)
    if medians.empty:
        return pd.DataFrame()
    memory = memory_column(medians)
    ratio = ratios(df)
    rows = []
    for _, best in best_configs(medians).iterrows():
        row = {"arch": best["arch"], "mode": best["mode"], "best config": best_label(best),
               BY_NAME["throughput"].unit: round(best["throughput"], 1),
               BY_NAME["step_ms_p50"].header(): round(best["step_ms_p50"], 2)}
        if memory is not None:
            row[memory.header("MB")] = round(best[memory.name], 1) if pd.notna(best[memory.name]) else None
        at_best = at_config(ratio, best)
        for ref in REFERENCES:
            match = at_best[at_best["reference"] == ref]
            row[speed_label(ref)] = round(match["ratio_median"].iloc[0], 3) if len(match) else None
        rows.append(row)
    return pd.DataFrame(rows)


def contention_warning(df: pd.DataFrame) -> str | None:
    """One sentence saying the run's comparisons are unreliable because the machine was busy, when at
    least CONTENDED_RUN_SHARE of its ok cells with a verdict were contended: how many of how many, the
    median `others_cpu` of those, the highest load average, the cells with other GPU processes.
    None otherwise, and for runs made before contention was measured (no verdicts).
    """
    if not set(names("contention")) <= set(df.columns):
        return None
    ok = ok_rows(df)
    judged = ok[ok["contended"].notna()]
    flagged = judged[was_contended(judged)]
    if flagged.empty or len(flagged) < CONTENDED_RUN_SHARE * len(judged):
        return None
    others = pd.to_numeric(flagged["others_cpu"], errors="coerce").median()
    load = pd.to_numeric(ok["load_avg"], errors="coerce").max()
    on_gpu = int((pd.to_numeric(flagged["gpu_other_procs"], errors="coerce") > 0).sum())
    why = "; ".join(w for w in (
        f"other processes used a median {others:.0%} of their CPUs" if pd.notna(others) else "",
        f"other processes on the GPU in {on_gpu} of them" if on_gpu else "",
        f"load average up to {load:.1f}" if pd.notna(load) else "") if w)
    of = f"the {len(judged)} ok cells measured for it" if len(judged) < len(ok) else f"{len(judged)} ok cells"
    return (f"Warning: the machine was busy during this run, so its timings, best configurations and ratios are "
            f"unreliable: {len(flagged)} of {of} ran contended{f' ({why})' if why else ''}; "
            f"rerun it on a quiet machine.")
