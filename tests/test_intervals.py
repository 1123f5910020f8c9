"""The 95% intervals: a configuration's over rounds (bench.intervals.rounds_median_ci, as config_medians gives
it), the exact bootstrap of a median, and the ratio intervals of compare and the gates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from report_fixture import INTERVAL_ROW_COLUMNS, make_old, write_run

from bench import results
from bench.intervals import bootstrap_medians, ci_text, median_ci, ratio_ci, rounds_median_ci
from bench.results.analysis import INTERVAL_COLUMNS, config_medians

ONE_CONFIG = {"archs": ("resnet50",), "impls": ("rv",), "batches": (8,), "precisions": ("fp32",), "failures": {},
              "compile_modes": ()}


def _rounds(p50s: list[float], reach: float = 0.01, converged: list[bool | None] | None = None) -> pd.DataFrame:
    """Rows of one configuration, a round per median, each with an interval of ±`reach` around it."""
    rows = [{"arch": "resnet18", "impl": "rv", "batch_size": 4, "image_size": 32, "precision": "fp32",
             "channels_last": False, "compile": "none", "mode": "inference", "device": "cpu", "round": r,
             "find_max_batch": False, "status": "ok", "cell_id": f"c{r}", "step_ms_p50": p50,
             "throughput": 4000 / p50, "step_ms_p50_ci_low": p50 * (1 - reach), "step_ms_p50_ci_high": p50 * (1 + reach),
             "converged": None if converged is None else converged[r]} for r, p50 in enumerate(p50s)]
    return results.store._tidy(rows)


def test_one_round_is_that_rounds_interval(tmp_path):
    assert rounds_median_ci([10.0], [9.5], [10.6]) == (9.5, 10.6)
    run = write_run(tmp_path / "run", rounds=1, **ONE_CONFIG)
    df = results.load(run)
    medians = config_medians(df)
    row = df[(df["mode"] == "inference")].iloc[0]
    config = medians[medians["mode"] == "inference"]
    for column in ("step_ms_p50_ci_low", "step_ms_p50_ci_high", "rel_ci", "throughput_ci_low", "throughput_ci_high"):
        assert config[column].iloc[0] == pytest.approx(row[column]), column
    assert config["converged"].tolist() == [True]


def test_several_rounds_widen_with_the_spread_between_them_and_contain_the_median():
    steady = config_medians(_rounds([10.0, 10.0, 10.0])).iloc[0]
    spread = config_medians(_rounds([9.0, 10.0, 11.5])).iloc[0]
    # Three agreeing rounds know the median better than one (±1%); rounds that disagree know it worse.
    assert steady["rel_ci"] < 0.01 < spread["rel_ci"]
    for config in (steady, spread):
        assert config["step_ms_p50_ci_low"] <= config["step_ms_p50"] <= config["step_ms_p50_ci_high"]
        assert config["throughput_ci_low"] <= config["throughput"] <= config["throughput_ci_high"]
        # Throughput's interval is the step time's, seen as images/s.
        assert config["throughput_ci_low"] == pytest.approx(4000 / config["step_ms_p50_ci_high"])
        assert config["throughput_ci_high"] == pytest.approx(4000 / config["step_ms_p50_ci_low"])
    assert spread["step_ms_p50_ci_low"] < 9.9 and spread["step_ms_p50_ci_high"] > 11.0


def test_the_interval_is_reproducible_and_independent_of_row_order():
    df = _rounds([9.0, 10.0, 11.5, 10.2])
    first = config_medians(df)[list(INTERVAL_COLUMNS)]
    pd.testing.assert_frame_equal(first, config_medians(df)[list(INTERVAL_COLUMNS)])
    pd.testing.assert_frame_equal(first, config_medians(df.iloc[::-1])[list(INTERVAL_COLUMNS)])


def test_converged_only_when_every_round_converged():
    assert config_medians(_rounds([1.0, 1.0], converged=[True, True]))["converged"].tolist() == [True]
    assert config_medians(_rounds([1.0, 1.0], converged=[True, False]))["converged"].tolist() == [False]
    assert config_medians(_rounds([1.0, 1.0], converged=[True, None]))["converged"].tolist() == [None]


def test_rows_without_intervals_give_nan(tmp_path):
    """A run made before rows carried intervals (its parquet lacks the columns) still has medians, with NaN
    intervals; so does a round with fewer than 6 steps (no interval of its own)."""
    run = make_old(write_run(tmp_path / "run", rounds=2, **ONE_CONFIG))
    df = results.load(run)
    assert not set(INTERVAL_ROW_COLUMNS) & set(df.columns)
    medians = config_medians(df)
    assert medians["throughput"].notna().all() and (medians["rounds"] == 2).all()
    assert medians[[c for c in INTERVAL_COLUMNS if c != "converged"]].isna().all().all()
    assert medians["converged"].isna().all()
    short = _rounds([1.0, 1.1]).assign(step_ms_p50_ci_low=[0.99, None])
    assert math.isnan(config_medians(short)["rel_ci"].iloc[0])


def test_bootstrap_medians_follow_resampling():
    """The order-statistic draws have the law of the median of a resample, odd and even sizes alike."""
    rng = np.random.default_rng(1)
    for n in (9, 10):
        samples = rng.lognormal(0.0, 0.1, n)
        exact = bootstrap_medians(samples, 20_000, np.random.default_rng(0))
        resampled = np.median(rng.choice(samples, size=(20_000, n)), axis=1)
        quantiles = [5, 25, 50, 75, 95]
        np.testing.assert_allclose(np.percentile(exact, quantiles), np.percentile(resampled, quantiles), rtol=0.01)


def test_ratio_interval_contains_the_ratio_and_narrows_with_samples():
    rng = np.random.default_rng(2)
    a, b = rng.lognormal(0.0, 0.05, 200), rng.lognormal(0.1, 0.05, 200)
    ratio = np.median(a) / np.median(b)
    low, high = ratio_ci(a, b)
    assert low < ratio < high and low < math.exp(-0.1) < high
    assert ratio_ci(a, b) == (low, high), "seeded"
    narrow = ratio_ci(rng.lognormal(0.0, 0.05, 5000), rng.lognormal(0.1, 0.05, 5000))
    assert narrow[1] - narrow[0] < (high - low) / 2
    assert ratio_ci([], b) is None


def test_paired_ratio_interval_is_the_median_interval_of_the_pairs():
    top, bottom = [1.0, 1.2, 1.1, 0.9, 1.3, 1.05, 1.15], [1.0] * 7
    assert ratio_ci(top, bottom, paired=True) == median_ci(np.array(top))
    assert ratio_ci(top[:5], bottom[:5], paired=True) is None
    assert ci_text((0.98123, 1.0041)) == "0.981–1.004" and ci_text(None) == "–"
