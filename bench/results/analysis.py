"""The analysis every view of a run shares: which rows count, per-config medians, the best config.

Every summary of a run (summary.txt, the report's summary cards, `run --profile`) starts from the
same per-config medians and picks its best configuration with the same rule (`best_configs`), so
two views of one run can never name different winners, nor disagree on whether a winner is tied
with its runner-up (`tied`). Ratios of rv to the reference implementations, the 95% interval of a
configuration's median over rounds, the memory column a run can show, and whether the machine was
too busy for the run's comparisons to hold (`contention_warning`) are defined here once for the same
reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.columns import BY_NAME, METRICS, Column, names, speed_label
from bench.config.cell import config_keys, config_label
from bench.intervals import relative_ci, rounds_median_ci

# A configuration on the run's device: what ratios and best configs are keyed on.
CONFIG_KEYS = config_keys(device=True)
REFERENCES = ("torchvision", "timm")

BEST_CONFIG_RULE = ("highest median throughput over rounds among the ok cells of any implementation (a deployment "
                    "backend's only where its output passed parity)")
TIE_RULE = ("its 95% throughput interval overlaps that of the runner-up (the next configuration of any "
            "implementation under the same rule)")
TIED_MARK = "(tied)"

# A metric's 95% interval over rounds (`config_medians`): the columns of its low and high end.
INTERVALS = {"step_ms_p50": ("step_ms_p50_ci_low", "step_ms_p50_ci_high"),
             "throughput": ("throughput_ci_low", "throughput_ci_high")}
# What `config_medians` adds to the METRICS medians, per configuration.
INTERVAL_COLUMNS = (*INTERVALS["step_ms_p50"], "rel_ci", *INTERVALS["throughput"], "converged")
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
    """Median over rounds of every METRICS column (the columns bench.columns marks `median`), per configuration and
    implementation (ok rows only), with the 95% interval of its median step and throughput.

    Rounds are repeats of one config, so every view shows their median. One row per config, impl
    and device (the CONFIG_KEYS and impl columns), sorted by them; `rounds` counts the ok rounds,
    `contended_rounds` those flagged contended, `parity_failed` whether a round's backend output failed parity. Metrics the results lack are NaN. The INTERVAL_COLUMNS:
    `step_ms_p50_ci_low`/`_high`, the 95% interval of the median over rounds of the median step
    (`rounds_median_ci`: one round's own interval, or a hierarchical bootstrap over several), `rel_ci`
    its reach from the median step as a share, `throughput_ci_low`/`_high` the same interval seen as
    images/s (batch / step time), and `converged`: whether every round's timed loop converged (None
    when a round has no verdict: the fixed rule, or a run made before the adaptive one). Rows without
    intervals (such runs) give NaN.
    """
    keys = config_keys(impl=True, device=True)
    ok = ok_rows(df)
    if ok.empty:
        return pd.DataFrame(columns=[*keys, *METRICS, "rounds", "contended_rounds", "parity_failed", *INTERVAL_COLUMNS])
    numeric = ok[keys].assign(**{
        m: pd.to_numeric(ok[m], errors="coerce") if m in ok.columns else math.nan
        for m in dict.fromkeys([*METRICS, *INTERVALS["step_ms_p50"], "round"])
    }, converged=ok["converged"] if "converged" in ok.columns else None,
        contended_rounds=was_contended(ok) if "contended" in ok.columns else False,
        parity_failed=ok["parity_ok"].eq(False) if "parity_ok" in ok.columns else False)
    # Rounds in order within each group (a groupby keeps the order), so the bootstrap's draws are the run's own.
    grouped = numeric.sort_values("round", kind="stable").groupby(keys, dropna=False)
    out = grouped[list(METRICS)].median().reset_index()
    out["rounds"] = grouped.size().to_numpy()
    out["contended_rounds"] = grouped["contended_rounds"].sum().to_numpy().astype(int)
    low, high = INTERVALS["step_ms_p50"]
    cis = [rounds_median_ci(*r.to_numpy().T) for _, r in grouped[["step_ms_p50", low, high]]]
    out[low] = [math.nan if ci is None else ci[0] for ci in cis]
    out[high] = [math.nan if ci is None else ci[1] for ci in cis]
    out["rel_ci"] = [math.nan if ci is None else relative_ci(p50, ci) for ci, p50 in zip(cis, out["step_ms_p50"])]
    per_s = 1000.0 * out["batch_size"].astype(float)
    out["throughput_ci_low"], out["throughput_ci_high"] = per_s / out[high], per_s / out[low]
    out["converged"] = [None if v.isna().any() else bool(v.astype(bool).all()) for _, v in grouped["converged"]]
    out["parity_failed"] = grouped["parity_failed"].any().to_numpy().astype(bool)
    return out


def plus_minus(rel: float | None) -> str | None:
    """How the tables show a configuration's `rel_ci`: "±1.2%", None where there is no interval."""
    return None if rel is None or np.isnan(rel) else f"±{100 * rel:.1f}%"


def best_configs(medians: pd.DataFrame, by: Sequence[str] = ("arch", "mode")) -> pd.DataFrame:
    """Per group of `by`, the medians row of its best configuration, sorted by `by`, with its runner-up.

    The one rule (BEST_CONFIG_RULE): the highest median throughput over rounds of any
    implementation, whatever implementation that is; views then show (or profile) every
    implementation at that config (`at_config`). Ties go to the first config and impl in key
    order, so the choice does not depend on how `medians` happens to be sorted. `medians` is
    `config_medians` output, or a table with its columns (more columns or a row order of its own
    are fine). Added columns: `runner_up`, the `best_label` of the group's next row under the same
    rule (any other configuration or implementation; None if the group has one row), and `tied`,
    whether the best one is tied with it (`tied`, TIE_RULE; None when it cannot be said).
    """
    eligible = medians["throughput"].notna()
    if "parity_failed" in medians:  # a backend whose output is not the model's is no candidate
        eligible &= ~medians["parity_failed"].astype(bool)
    ranked = medians[eligible].sort_values([*CONFIG_KEYS, "impl"], kind="stable")
    ranked = ranked.sort_values("throughput", ascending=False, kind="stable")
    runners = ranked[ranked.duplicated(list(by))].drop_duplicates(list(by))
    best = ranked.drop_duplicates(list(by)).sort_values(list(by), kind="stable").reset_index(drop=True)
    runner_up, tie = [], []
    for _, row in best.iterrows():
        runner = runners[(runners[list(by)] == row[list(by)]).all(axis=1)]
        runner_up.append(best_label(runner.iloc[0]) if len(runner) else None)
        tie.append(tied(row, runner.iloc[0]) if len(runner) else None)
    return best.assign(runner_up=runner_up, tied=tie)


def tied(best: pd.Series, runner_up: pd.Series) -> bool | None:
    """Whether the best configuration is tied with its runner-up (TIE_RULE): their 95% throughput intervals
    overlap, so the run cannot tell which is faster. None when either has no interval (a run made
    before rows carried one, or a round with fewer than 6 steps)."""
    low, high = INTERVALS["throughput"]
    ends = [row.get(c, math.nan) for row in (best, runner_up) for c in (low, high)]
    if any(pd.isna(e) for e in ends):
        return None
    best_low, best_high, runner_low, runner_high = ends
    return bool(best_low <= runner_high and runner_low <= best_high)


def best_text(best: pd.Series) -> str:
    """How the summaries name a best config (`best_label`), marked TIED_MARK when it is `tied` with its runner-up."""
    tie = best.get("tied")  # None or NaN: not known
    return best_label(best) + (f" {TIED_MARK}" if not pd.isna(tie) and tie else "")


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
    """Per (arch, mode): the best config (`best_configs`, `best_text`), its throughput, p50 latency and its ± (`plus_minus`),
    memory, rv ratios.

    The numbers are the best implementation's medians over rounds; the ± is how far the 95% interval of
    its median step reaches (`rel_ci`); the ratios are the median per-round rv speed ÷ reference speed at
    that config (None where rv or the reference did not run it). The memory column is headed as
    `memory_column` says, in MB; there is none if nothing was measured.
    """
    medians = config_medians(df)
    if medians.empty:
        return pd.DataFrame()
    memory = memory_column(medians)
    ratio = ratios(df)
    rows = []
    for _, best in best_configs(medians).iterrows():
        row = {"arch": best["arch"], "mode": best["mode"], "best config": best_text(best),
               BY_NAME["throughput"].unit: round(best["throughput"], 1),
               BY_NAME["step_ms_p50"].header(): round(best["step_ms_p50"], 2),
               BY_NAME["rel_ci"].header(): plus_minus(best["rel_ci"])}
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
