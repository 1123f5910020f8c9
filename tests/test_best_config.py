"""summary.txt and the report's summary cards name the same best configuration for the same run, and mark it
tied with its runner-up by the same rule."""

from __future__ import annotations

import re

from report_fixture import IMPL_SPEED, MODELS, make_old, write_run

from bench import results
from bench.report import tables
from bench.report.data import per_config
from bench.report.summary import summary_text, write_run_report
from bench.results.analysis import TIE_RULE, TIED_MARK, best_configs, best_label, config_medians

# rv 3x slower at amp-bf16 batch 64, its otherwise fastest setting: the run's best impl is timm, and
# rv's own fastest config is another one - the two rules that summary.txt and index.html used to apply.
SLOW_RV = {("resnet50", "rv", 64, "amp-bf16"): 3.0, ("vit_base_patch16_224", "rv", 64, "amp-bf16"): 3.0}


def _config(label: str) -> str:
    """A best-config label without its impl."""
    return label.split(" · ", 1)[1]


def _cards(html: str) -> list[tuple[str, str, str]]:
    """(arch, mode, best config) of each summary card of index.html."""
    summary = html.split('<section id="summary">')[1].split("</section>")[0]
    return re.findall(r'<h3>([^<]+) · ([^<]+)</h3>\s*<p class="best">Best: <b>[^<]+</b> with ([^<]+)</p>', summary)


def test_summary_text_and_report_name_the_same_best_config(tmp_path):
    run_dir = write_run(tmp_path / "run", slow=SLOW_RV)
    df = results.load(run_dir)
    assert write_run_report(run_dir, summary_text(df)) is not None
    cards = _cards((run_dir / "index.html").read_text(encoding="utf-8"))
    rows = (run_dir / "summary.txt").read_text(encoding="utf-8").splitlines()[2:]  # after the counts and header
    assert len(cards) == len(rows) == 4  # resnet50 x 3 modes, vit inference
    for arch, mode, label in cards:
        (row,) = [r for r in rows if r.split()[:2] == [arch, mode]]
        assert f"  {label}  " in row, (label, row)

    # The run exercises the rule: rv wins nowhere, and rv's own fastest config is not always the best one.
    assert not [label for _, _, label in cards if label.startswith("rv ")]
    medians = config_medians(df)
    rv_only = best_configs(medians[medians["impl"] == "rv"])
    rv_best = {(b["arch"], b["mode"]): best_label(b) for _, b in rv_only.iterrows()}
    assert any(_config(rv_best[arch, mode]) != _config(label) for arch, mode, label in cards)


def _two_impls(run_dir, timm_vs_rv: float):
    """resnet50 at one config, rv and timm only, timm's steps `timm_vs_rv` times as long as rv's."""
    ms = {impl: 0.4 + MODELS["resnet50"][0] * 8 / 40.0 / IMPL_SPEED[impl] for impl in ("rv", "timm")}
    return write_run(run_dir, archs=("resnet50",), impls=("rv", "timm"), batches=(8,), precisions=("fp32",),
                     compile_modes=(), failures={}, slow={("resnet50", "timm", 8, "fp32"): timm_vs_rv * ms["rv"] / ms["timm"]})


def _inference(run_dir):
    """summary.txt, its inference row and the inference card of index.html, after the run's report."""
    text = summary_text(results.load(run_dir))
    assert write_run_report(run_dir, text) is not None
    assert (run_dir / "summary.txt").read_text(encoding="utf-8") == text, "the terminal shows what summary.txt keeps"
    (row,) = [line for line in text.splitlines() if line.startswith("resnet50  inference")]
    summary = (run_dir / "index.html").read_text(encoding="utf-8").split('<section id="summary">')[1]
    card = summary.split("<h3>resnet50 · inference</h3>")[1].split("</div>")[0]
    return text, row, card


def test_a_winner_whose_interval_overlaps_the_runner_ups_is_tied_in_every_view(tmp_path):
    # rv and timm equally fast: whichever wins, the other is within its interval.
    text, row, card = _inference(_two_impls(tmp_path / "run", timm_vs_rv=1.0))
    medians = config_medians(results.load(tmp_path / "run"))
    best = best_configs(medians)
    winner = best[best["mode"] == "inference"].iloc[0]
    assert bool(winner["tied"]) and winner["runner_up"] == f"{'rv' if winner['impl'] == 'timm' else 'timm'} · bs8 · 224px · fp32"
    assert f"{best_label(winner)} {TIED_MARK}" in row
    assert f"with {best_label(winner)} {TIED_MARK}</p>" in card
    assert f'<p class="runner-up">Runner-up: {winner["runner_up"]}</p>' in card
    assert f"{TIED_MARK}: {TIE_RULE}" in text and TIE_RULE in summary_lead(tmp_path / "run")


def test_a_winner_far_ahead_is_not_tied(tmp_path):
    df = results.load(_two_impls(tmp_path / "run", timm_vs_rv=0.8))
    (row,) = [line for line in summary_text(df).splitlines() if line.startswith("resnet50  inference")]
    assert "timm · bs8 · 224px · fp32" in row and TIED_MARK not in row
    (card,) = [c for c in tables.summary(per_config(df)) if c["mode"] == "inference"]
    assert card["best"] == "timm · bs8 · 224px · fp32" and card["runner_up"] == "rv · bs8 · 224px · fp32"


def test_no_intervals_no_tie_mark(tmp_path):
    """A run made before rows carried intervals: the winner is named, never marked (and index.html still
    renders: tests/test_report.py)."""
    df = results.load(make_old(_two_impls(tmp_path / "run", timm_vs_rv=1.0)))
    assert best_configs(config_medians(df))["tied"].isna().all()
    assert TIED_MARK not in summary_text(df)
    assert not [c for c in tables.summary(per_config(df)) if TIED_MARK in c["best"]]


def summary_lead(run_dir) -> str:
    """The summary section's lead paragraph of a run's index.html."""
    return (run_dir / "index.html").read_text(encoding="utf-8").split('<p class="lead">')[1].split("</p>")[0]
