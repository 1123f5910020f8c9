"""What the user sees of a run: the progress bar, the closing table, the report and `latest` link."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bench.results import CONFIG_KEYS, ok_rows, ratios


def progress_bar(total: int, done: int) -> tqdm:
    """A bar over all jobs of the sweep (resumed runs start at the finished count), with ETA."""
    return tqdm(total=total, initial=done, unit="cell", dynamic_ncols=True)


def _config_text(row: pd.Series) -> str:
    parts = [row["impl"], f"bs{row['batch_size']}", f"{row['image_size']}px", row["precision"]]
    if row["channels_last"]:
        parts.append("cl")
    if row["compile"] != "none":
        parts.append(f"compile={row['compile']}")
    return " ".join(str(p) for p in parts)


def ok_medians(df: pd.DataFrame) -> pd.DataFrame:
    """Median over rounds of throughput, p50 latency and memory per config and impl.

    Only ok sweep cells count (not --find-max-batch rows). Memory is the CUDA peak allocation,
    or on a CPU run the process's RSS growth: what a CPU can tell, too coarse to compare impls.
    """
    ok = ok_rows(df)
    memory = "mem_rss_delta_mb" if (ok["device"] == "cpu").all() else "mem_peak_alloc_mb"
    return (ok.assign(memory_mb=ok[memory]).groupby(CONFIG_KEYS + ["impl"], dropna=False)
            [["throughput", "step_ms_p50", "memory_mb"]].median().reset_index())


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, mode): the best config, its throughput, p50 latency, memory, rv ratios.

    The best config is rv's fastest (median over rounds) if rv ran, else the fastest of any impl;
    the ratios are the median per-round rv/reference ratios at that config. The memory column
    is "peak MB" (CUDA peak allocation) on a GPU, "RSS growth MB (approx.)" on a CPU.
    """
    med = ok_medians(df)
    if med.empty:
        return pd.DataFrame()
    memory = "RSS growth MB (approx.)" if (med["device"] == "cpu").all() else "peak MB"
    ratio = ratios(df)
    rows = []
    for (arch, mode), group in med.groupby(["arch", "mode"]):
        pool = group[group["impl"] == "rv"] if (group["impl"] == "rv").any() else group
        best = pool.loc[pool["throughput"].idxmax()]
        row = {"arch": arch, "mode": mode, "best config": _config_text(best),
               "img/s": round(best["throughput"], 1), "p50 ms": round(best["step_ms_p50"], 2),
               memory: round(best["memory_mb"], 1) if pd.notna(best["memory_mb"]) else None}
        for ref in ("torchvision", "timm"):
            match = ratio[(ratio["reference"] == ref)
                          & (ratio[CONFIG_KEYS] == best[CONFIG_KEYS]).all(axis=1)]
            row[f"rv/{ref}"] = round(match["ratio_median"].iloc[0], 3) if len(match) else None
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(df: pd.DataFrame) -> str:
    """Status counts and the summary table as plain text (terminal and summary.txt)."""
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "no cells"
    table = summary_table(df)
    body = table.to_string(index=False, na_rep="-") if not table.empty else "(no ok cells)"
    return f"cells: {counts}\n{body}\n"


def write_report(run_dir: Path, text: str) -> Path | None:
    """Write summary.txt, then the HTML report (bench.report); return its path, None if it failed.

    A failing report must not cost the results, so its error is kept in summary.txt instead.
    """
    summary = run_dir / "summary.txt"
    summary.write_text(text)
    try:
        from bench.report import write_report as write_html

        return Path(write_html(run_dir))
    except Exception:  # noqa: BLE001 - keep the run's outputs whatever the report does
        with open(summary, "a") as fh:
            fh.write("\nHTML report failed:\n" + traceback.format_exc(limit=3))
        return None


def update_latest(reports_dir: Path, run_dir: Path) -> None:
    """Point reports_dir/latest at run_dir (relative link, replaced atomically)."""
    link = reports_dir / "latest"
    tmp = reports_dir / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir.resolve(), reports_dir.resolve()))
    os.replace(tmp, link)
