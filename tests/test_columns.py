"""bench.columns is the one declaration of a row's columns: what derives from it, and what it refuses."""

from __future__ import annotations

import pytest

from bench import columns
from bench.columns import BY_NAME, COLUMNS, MEASURE_COLUMNS, METRICS, for_mode, speed_label, values
from bench.config.cell import Cell
from bench.measure.env import collect_env
from bench.results import analysis, store, timm
from bench.results.rows import make_row


def test_values_fill_a_group_in_order_and_refuse_an_undeclared_name() -> None:
    got = values("efficiency", mfu=0.5)
    assert list(got) == ["achieved_tflops", "mfu"] and got == {"achieved_tflops": None, "mfu": 0.5}
    with pytest.raises(ValueError, match=r"not declared in group 'efficiency'"):
        values("efficiency", mfu_pct=50.0)
    with pytest.raises(ValueError, match="unknown column group"):
        values("efficency")


def test_the_store_analysis_and_timm_export_derive_from_the_declarations() -> None:
    assert store.COLUMN_ORDER == tuple(c.name for c in COLUMNS)
    assert analysis.METRICS is METRICS and set(METRICS) == {c.name for c in COLUMNS if c.median}
    assert set(MEASURE_COLUMNS) == {c.name for c in COLUMNS if c.group in columns.MEASURE_GROUPS}
    exported = {name for name, _, _ in timm._FROM.values()}
    assert exported == {"samples_per_sec", "step_time", "gmacs", "param_count"}


def test_every_column_has_a_group_and_modes_and_labels_carry_units() -> None:
    assert all(c.group in columns.GROUPS and c.modes and set(c.modes) <= set(columns.ALL_MODES) for c in COLUMNS)
    assert BY_NAME["step_ms_p50"].axis_label() == "p50 step time (ms)"
    assert BY_NAME["mem_rss_delta_mb"].header() == "RSS growth MiB (approx.)"
    assert "transfer" not in BY_NAME["step_ms_p50"].modes and "ddp-train" in BY_NAME["step_ms_p50"].modes
    assert set(columns.names("scale")) <= set(for_mode(columns.DDP_MODE)) - set(for_mode("inference"))


def test_the_environment_collected_is_the_environment_declared() -> None:
    assert tuple(collect_env("cpu")) == columns.names("environment")


def test_a_row_carries_the_identity_and_refuses_an_undeclared_column() -> None:
    cell = Cell("resnet18", "rv", 2, 32)
    row = make_row("run-1", "abc", cell, "ok", started=0.0, env={"env_host": "h"}, throughput=1.0)
    assert row["schema_version"] == store.SCHEMA_VERSION and row["cell_id"] == "abc" and row["env_host"] == "h"
    assert {k: row[k] for k in ("arch", "batch_size", "status")} == {"arch": "resnet18", "batch_size": 2,
                                                                     "status": "ok"}
    assert row["started_at"] == "1970-01-01T00:00:00+00:00" and row["wall_s"] > 0
    with pytest.raises(ValueError, match=r"\['img_per_s'\] are not declared"):
        make_row("run-1", "abc", cell, "ok", img_per_s=1.0)


def test_one_ratio_convention() -> None:
    assert speed_label("torchvision") == "rv speed ÷ torchvision"
