"""summary.txt and the report's summary cards name the same best configuration for the same run."""

from __future__ import annotations

import re

from report_fixture import write_run

from bench import results
from bench.report.summary import summary_text, write_run_report
from bench.results.analysis import best_configs, best_label, config_medians

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
