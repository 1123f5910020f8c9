"""The export of a run's results in the layout of timm's benchmark CSV (results_timm.csv).

So that numbers measured here can be put next to the ones timm's own benchmark.py publishes, the
export keeps only the rows that ran what timm's benchmark runs:
- precision: timm's `--precision float32` leaves PyTorch's defaults (cuDNN TF32 on, matmul TF32
  off), which is our `torch-default` on CUDA; on a CPU (no TF32) it is our `fp32`. CUDA `fp32`
  (TF32 off everywhere) and `tf32` rows have no timm counterpart and are left out. `timm_precision`
  names the timm precision each row matches, `precision` ours.
- compile: timm's `--torchcompile` compiles without Inductor freezing, so the `-freeze` modes are
  left out.
- backend: timm's benchmark times PyTorch itself, so only eager rows are kept (rows of another
  deployment backend, `rvbench run --backends`, are left out).
- train: timm trains with SGD with Nesterov momentum (our `--optimizer sgd`, "sgd-nesterov") and no
  GradScaler; `train_optimizer` names the optimizer of each train row (rows of different optimizers
  are not merged), and amp-fp16 train rows ran a GradScaler.
"""

from __future__ import annotations

import pandas as pd

from bench.columns import COLUMNS
from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import split_compile
from bench.precisions import PRECISIONS, precision

# timm's benchmark.py columns (inference then train; param_count last, as in its "both" mode).
# infer_gmacs is MACs per image / 1e9; infer_macts (activation count, millions, from fvcore)
# is not measured here and left empty.
TIMM_COLUMNS = [
    "model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
    "infer_gmacs", "infer_macts", "train_samples_per_sec", "train_step_time", "train_batch_size",
    "train_img_size", "param_count",
]  # fmt: skip
# Ours, after timm's: what timm's name leaves open, and `timer` (the clock of step_time: with --process-time the
# step time is CPU time while samples_per_sec stays wall time; empty for runs made before the column).
_TIMM_EXTRA = ["impl", "precision", "timm_precision", "channels_last", "compile", "device", "timer"]
# Our column -> (timm's name, after infer_/train_ where timm prefixes it; the factor from our unit to timm's; the
# decimals timm rounds it to), as bench.columns declares it: samples/s over the loop's wall time, mean step ms,
# GMACs and params in millions (both to 2 decimals, as timm's published CSVs).
_FROM = {c.name: c.timm for c in COLUMNS if c.timm is not None}


def _timm_precision(name: str, device: str) -> str | None:
    """timm's name for our precision on the device; None for a name we do not know (a hand-merged row)."""
    return precision(name).timm_name(device) if name in PRECISIONS else None
def timm_table(df: pd.DataFrame) -> pd.DataFrame:
    """The ok eager inference/train cells timm's benchmark could have run (see the module docstring), in
    its benchmark-CSV layout, median over rounds.

    One row per (arch, impl, precision, layout, compile, device, batch, image size) and train
    optimizer; `model` is the arch name and the identifying columns (impl, precision, ...) follow
    timm's columns. Like timm: samples/s over the timed wall time, step time = mean ms per step,
    params in millions.
    """
    frozen = df["compile"].map(lambda mode: split_compile(str(mode))[1]).astype(bool)
    eager = df["backend"].fillna(DEFAULT_BACKEND) == DEFAULT_BACKEND if "backend" in df else True
    ok = df[(df["status"] == "ok") & df["mode"].isin(["inference", "train"]) & ~frozen & eager].copy()
    ok["timm_precision"] = [_timm_precision(str(p), str(d)) for p, d in zip(ok["precision"], ok["device"])]
    ok = ok[ok["timm_precision"].notna()]
    ok["train_optimizer"] = ok["optimizer_used"] if "optimizer_used" in ok else None
    ok["timer"] = ok["timer"] if "timer" in ok else None
    keys = ["arch", "batch_size", "image_size"] + _TIMM_EXTRA
    out = None
    for mode, prefix in (("inference", "infer"), ("train", "train")):
        part_keys = keys + ["train_optimizer"] if prefix == "train" else keys
        part = ok[ok["mode"] == mode].groupby(part_keys, dropna=False).agg(
            **{name: (ours, "median") for ours, (name, _, _) in _FROM.items()})
        for name, factor, decimals in _FROM.values():
            part[name] = part[name] * factor if decimals is None else (part[name] * factor).round(decimals)
        part = part.reset_index()
        part[f"{prefix}_batch_size"] = part["batch_size"]
        part[f"{prefix}_img_size"] = part["image_size"]
        prefixed = {name: f"{prefix}_{name}" for name, _, _ in _FROM.values() if name not in TIMM_COLUMNS}
        part = part.rename(columns=prefixed).drop(columns=[c for c in prefixed.values() if c not in TIMM_COLUMNS])
        out = part if out is None else out.merge(part, on=keys, how="outer", suffixes=("", "_train"))
    if "param_count_train" in out:
        out["param_count"] = out["param_count"].fillna(out.pop("param_count_train"))
    out["model"] = out["arch"]
    out["infer_macts"] = None
    return out.reindex(columns=TIMM_COLUMNS + _TIMM_EXTRA + ["train_optimizer"])
