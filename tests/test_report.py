"""The HTML report: self-contained, escaped, every section and plot present, clear CLI errors."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from report_fixture import CELL_GAP_S, WALL_S, fail_every_cell, make_old, real_smoke_run, write_run

from bench.cli import main
from bench.columns import BY_NAME
from bench.report import write_report
from bench.report.data import per_config
from bench.report.sections import perf
from bench.report.sections.derived import speedup_table
from bench.results import load
from bench.results.analysis import INTERVALS, TIED_MARK

# One xdist worker makes the real smoke run (report_fixture.real_smoke_run) for both report test modules.
pytestmark = pytest.mark.xdist_group("smoke_run")

HOSTILE_ARCH = "<script>alert('arch')</script>"
SMALL_RUN = {"archs": ("resnet50",), "batches": (8,), "precisions": ("fp32",), "rounds": 2, "failures": {}}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A GPU-like run with every kind of data (profiles, plain and frozen compile too) plus a failed row
    with a hostile arch name."""
    run_dir = write_run(tmp_path_factory.mktemp("synthetic"), profiles=True, compile_modes=("default", "default-freeze"))
    row = json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])
    row.update(cell_id="hostile00000", arch=HOSTILE_ARCH, status="error", message="boom </td><b>x</b>")
    with open(run_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return run_dir, write_report(run_dir).read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The report of a real smoke run on the CPU."""
    run_dir = real_smoke_run(tmp_path_factory.getbasetemp() / "smoke_run")
    return run_dir, write_report(run_dir).read_text()


def _drawn(html: str) -> list[str]:
    return re.findall(r'<figure class="plot" data-plot="([a-z_]+)">\s*<figcaption>[^<]*</figcaption>\s*<img ', html)


def test_untrusted_text_is_escaped(synthetic):
    _, html = synthetic
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#39;arch&#39;)&lt;/script&gt;" in html
    assert "bad &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert "boom &lt;/td&gt;&lt;b&gt;x&lt;/b&gt;" in html


@pytest.mark.parametrize("report", ["synthetic", "smoke"])
def test_self_contained(report, request):
    _, html = request.getfixturevalue(report)
    assert not re.search(r"https?://", html), "the report must not reference any URL"
    assert not re.search(r"<(script|link|iframe)\b", html)
    assert not re.search(r'src="(?!data:image/png;base64,)', html), "every image is inlined"


def test_full_report_sections_and_plots(synthetic):
    run_dir, html = synthetic
    for section in ("summary", "performance", "derived", "memory", "profile", "flops", "compile", "failures",
                    "environment"):
        assert f'<section id="{section}">' in html
    drawn = _drawn(html)
    assert drawn == [
        "throughput", "latency", "memory", "speedup", "ratio", "finetune", "mfu", "energy",
        "memory_predicted", "memory_check", "profile_categories", "roofline",
    ]  # fmt: skip
    assert f'data-plots="{len(drawn)}"' in html
    assert 'href="results.csv"' in html and (run_dir / "results.csv").exists()
    for fact in ("NVIDIA H100 80GB HBM3", "570.124.06", "2.11.0+cu128", "0123456789ab", "synthetic"):
        assert fact in html
    # The failed cells: the oom and the error in both rounds, and the hostile row.
    failures = html.split('<section id="failures">')[1].split("</section>")[0]
    assert failures.count("<tr>") == 1 + 3
    assert "0, 1" in failures
    # Compile times and the per-arch summary show the planted compile variant.
    assert "41.5" in html.split('<section id="compile">')[1].split("</section>")[0]
    summary = html.split('<section id="summary">')[1].split("</section>")[0]
    assert "amp-bf16 +compile" in summary
    assert "<th class=\"num\">peak MiB</th>" in summary and "RSS growth" not in summary


def test_a_run_without_contention_columns_has_no_warning(synthetic):
    """The synthetic run predates the contention columns (bench.measure.contention): nothing to warn about."""
    _, html = synthetic
    assert 'class="warning"' not in html and "Contended (" not in html


def test_speedup_shows_frozen_compile_beside_plain_compile(synthetic):
    run_dir, _ = synthetic
    variants = set(speedup_table(per_config(load(run_dir)))["variant"])
    assert {"amp-bf16 +compile", "amp-bf16 +compile +freeze"} <= variants


def test_real_cpu_run_skips_what_it_cannot_show(smoke):
    run_dir, html = smoke
    drawn = _drawn(html)
    # A CPU measures no CUDA memory: the predicted peak is its memory plot, and RSS growth is not plotted.
    assert {"throughput", "latency", "memory_predicted", "ratio", "profile_categories"} <= set(drawn)
    assert "memory" not in drawn
    assert f'data-plots="{len(drawn)}"' in html
    skipped = re.findall(r'data-skipped="([a-z_]+)"', html)
    assert {"mfu", "energy", "roofline", "speedup", "finetune", "memory_check"} == set(skipped)
    assert not set(skipped) & set(drawn)
    for arch in ("resnet18", "vit_tiny_patch16_224"):
        assert f"<h3>{arch} · inference</h3>" in html
    assert "Every cell measured successfully." in html
    summary = html.split('<section id="summary">')[1].split("</section>")[0]
    assert "<th class=\"num\">RSS growth MiB (approx.)</th>" in summary and "peak MiB" not in summary
    assert "GFLOP are forward FLOPs per step (per image x batch size)" in _section(html, "profile")
    assert (run_dir / "index.html").exists()


def test_memory_section_predicted_beside_measured_and_largest_batches(synthetic, smoke):
    """The Memory section: predicted against measured where CUDA measured (the synthetic GPU run), and
    the largest batch predicted to fit each common card for every rv arch x mode x precision of the run."""
    for (_, html), archs in ((synthetic, ("resnet50", "vit_base_patch16_224")), (smoke, ("resnet18", "vit_tiny_patch16_224"))):
        memory = _section(html, "memory")
        assert "Largest batch predicted to fit" in memory and "H100 80GB" in memory and "RTX 4090 24GB" in memory
        for arch in archs:
            assert f"<td>{arch}</td>" in memory
    assert "Error predicted/measured - 1: median -5.0%" in _section(synthetic[1], "memory")


def test_no_profiles_no_profile_section(tmp_path):
    run_dir = write_run(tmp_path / "run", archs=("resnet50",), batches=(8,), precisions=("fp32",), rounds=1, failures={})
    html = write_report(run_dir).read_text()
    assert '<section id="profile">' not in html
    assert 'href="#profile"' not in html


def test_cli_report(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", archs=("resnet50",), batches=(8,), precisions=("fp32",), rounds=1, failures={})
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "index.html")


@pytest.mark.parametrize("make", ["missing", "empty_dir", "empty_results"])
def test_cli_report_bad_dir(make, tmp_path, capsys):
    target = tmp_path / "run"
    if make != "missing":
        target.mkdir()
    if make == "empty_results":
        (target / "results.jsonl").write_text("")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvbench report: error: ") and str(target) in err
    assert "Traceback" not in err


def _section(html: str, name: str) -> str:
    return html.split(f'<section id="{name}">')[1].split("</section>")[0]


def test_run_where_every_cell_failed_still_gets_a_report(tmp_path):
    run_dir = write_run(tmp_path / "run", archs=("resnet50",), batches=(8,), precisions=("fp32",), rounds=1)
    messages = fail_every_cell(run_dir)
    html = write_report(run_dir).read_text()
    assert _drawn(html) == []
    assert 'data-plots="0"' in html
    assert "No cell measured successfully." in _section(html, "summary")
    failures = _section(html, "failures")
    assert failures.count("<tr>") == 1 + len(messages)
    for message in messages:
        assert message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in failures
    assert "<i>" not in html


def test_wall_time_is_the_elapsed_span_and_the_sum(tmp_path):
    run_dir = write_run(tmp_path / "run", archs=("resnet50",), batches=(8,), precisions=("fp32",), rounds=1, failures={})
    n_rows = len((run_dir / "results.jsonl").read_text().splitlines())
    elapsed = (n_rows - 1) * CELL_GAP_S + WALL_S
    html = write_report(run_dir).read_text()
    assert (
        f"<dt>Wall time</dt><dd>{elapsed:.1f} s elapsed (first cell start to last cell end)"
        f" · {n_rows * WALL_S:.1f} s sum of cell times</dd>"
    ) in html


def test_profile_details_per_arch_and_impl(synthetic):
    _, html = synthetic
    profile = _section(html, "profile")
    details = profile.split('<details class="profile">')[1:]
    assert len(details) == 2 * 3  # arch x impl of the fixture
    assert "<summary>resnet50 · rv · bs64 amp-bf16</summary>" in details[0]
    first = details[0]
    ops = first.split("<h4>Top operators</h4>")[1].split("<h4>")[0]
    assert ops.count("<tr>") == 1 + 20, "the top 20 operators and a header row"
    assert "aten::convolution" in ops and "52.5" in ops and "24.0" in ops
    assert "&lt;b&gt;kernel_0&lt;/b&gt;" in ops and "<b>kernel" not in html
    modules = first.split("<h4>Per module</h4>")[1].split("<h4>")[0]
    for group in ("stem", "layer1", "layer2", "head"):
        assert f"<td>{group}</td>" in modules
    assert "resnet50 rv: forward time only" in modules
    memory = first.split("<h4>Peak memory per phase</h4>")[1]
    assert "812.0" in memory and "1,630.5" in memory and "420.0" in memory


def test_profile_without_phase_memory_shows_the_note(tmp_path):
    run_dir = write_run(
        tmp_path / "run", archs=("resnet50",), impls=("rv",), batches=(8,), precisions=("fp32",), rounds=1,
        failures={}, profiles=True,
    )
    path = run_dir / "profiles" / "resnet50-rv" / "profile.json"
    summary = json.loads(path.read_text())
    summary["memory"] = {"forward_mb": None, "backward_mb": None, "optimizer_mb": None, "note": "no peaks on CPU"}
    summary["modules"] = []
    summary["modules_note"] = "no per-module time under torch.compile"
    path.write_text(json.dumps(summary))
    profile = _section(write_report(run_dir).read_text(), "profile")
    memory = profile.split("<h4>Peak memory per phase</h4>")[1]
    assert "no peaks on CPU" in memory and "<table>" not in memory
    modules = profile.split("<h4>Per module</h4>")[1].split("<h4>")[0]
    assert "no per-module time under torch.compile" in modules and "<table>" not in modules


def _interval_bars(monkeypatch, plot, configs: pd.DataFrame) -> set[tuple[float, float, float]]:
    """(batch, low, high) of every vertical error bar `plot(configs)` draws, from its figure's errorbar containers."""
    figures = []
    monkeypatch.setattr(perf, "encode", lambda fig, *args, **kwargs: figures.append(fig))
    plot(configs)
    (fig,) = figures
    bars = set()
    for ax in fig.axes:
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer):
                for (x, low), (_, high) in container.lines[2][0].get_segments():
                    bars.add((round(float(x)), round(float(low), 6), round(float(high), 6)))
    plt.close(fig)
    return bars


def _intervals(configs: pd.DataFrame, y: str) -> set[tuple[float, float, float]]:
    low, high = INTERVALS[y]
    rows = configs.dropna(subset=[low, high])
    return {(int(b), round(lo, 6), round(hi, 6)) for b, lo, hi in zip(rows["batch_size"], rows[low], rows[high])}


def test_throughput_and_latency_plots_draw_each_configs_interval(synthetic, tmp_path, monkeypatch):
    run_dir, _ = synthetic
    configs = per_config(load(run_dir))
    throughput = _intervals(configs, "throughput")
    assert len(throughput) == configs["throughput"].notna().sum() > 10
    assert _interval_bars(monkeypatch, perf.throughput, configs) == throughput
    # The latency plot's single-batch panels also draw a bar up to p99; every p50 interval is there.
    assert _intervals(configs, "step_ms_p50") <= _interval_bars(monkeypatch, perf.latency, configs)
    old = per_config(load(make_old(write_run(tmp_path / "old", **SMALL_RUN))))
    assert _interval_bars(monkeypatch, perf.throughput, old) == set(), "no interval, no bar"


def test_summary_tables_show_the_plus_minus_column(synthetic):
    _, html = synthetic
    summary = _section(html, "summary")
    header = f'<th class="num">{BY_NAME["rel_ci"].header()}</th>'
    assert summary.count(header) == 4  # a card per arch and mode
    values = re.findall(r'<td class="num">±(\d+\.\d)%</td>', summary)
    assert len(values) >= 4 * 2 and all(0 < float(v) < 5 for v in values)
    assert "±CI: how far the 95% interval of the median step" in summary


def test_a_run_made_before_intervals_still_reports(tmp_path):
    """Rows without the interval columns (a run made before them, resumed or re-reported): the page renders
    every plot it did, the ± column shows a dash and no winner is marked tied."""
    html = write_report(make_old(write_run(tmp_path / "run", **SMALL_RUN))).read_text()
    assert {"throughput", "latency"} <= set(_drawn(html))
    summary = _section(html, "summary")
    assert f'<th class="num">{BY_NAME["rel_ci"].header()}</th>' in summary and "±0" not in summary
    assert TIED_MARK not in summary.split("</p>", 1)[1]  # past the lead, which explains the mark
