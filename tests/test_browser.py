"""The report in a real browser: headless Chromium via Playwright, offline, from file://.

Checks what a person would notice: a console error, a request leaving the page, a missing section
or plot, a blank page. Skipped only when Chromium or Playwright is not installed at all.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from report_fixture import real_smoke_run, write_run

from bench.report import write_report

# One xdist worker makes the real smoke run (report_fixture.real_smoke_run) for both report test modules.
pytestmark = pytest.mark.xdist_group("smoke_run")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SECTIONS = ["summary", "performance", "derived", "profile", "flops", "compile", "failures", "environment"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A real smoke run's report, and a full synthetic GPU-like report (every plot, profiles too)."""
    smoke = real_smoke_run(tmp_path_factory.getbasetemp() / "smoke_run")
    full = write_run(tmp_path_factory.mktemp("full"), profiles=True)
    return {"smoke": write_report(smoke), "full": write_report(full)}


def _open(browser, path: Path):
    """Load the page offline; return it with the console messages, page errors and requests seen."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    seen = {"console": [], "errors": [], "requests": []}
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    return page, seen


def _pixel_spread(png: bytes) -> float:
    """Standard deviation of the screenshot's grey levels: near 0 for a blank page."""
    import io

    from PIL import Image, ImageStat

    return ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).stddev[0]


@pytest.mark.parametrize("which", ["smoke", "full"])
def test_report_in_chromium(browser, reports, which):
    path = reports[which]
    page, seen = _open(browser, path)
    try:
        assert seen["errors"] == []
        assert [m for m in seen["console"] if m.startswith(("error", "warning"))] == []
        assert seen["requests"] == [path.as_uri()], "the page must not load anything but itself"
        for section in SECTIONS:
            if section == "profile" and which == "smoke" and not (path.parent / "profiles").exists():
                continue
            assert page.locator(f"section#{section}").is_visible(), section
            assert page.locator(f"section#{section} h2").inner_text().strip()
        declared = int(page.locator("body").get_attribute("data-plots"))
        images = page.locator("figure.plot img")
        assert images.count() == declared > 0
        for i in range(declared):
            size = images.nth(i).evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size[0] and size[1] > 100 and size[2] > 100, f"plot {i} did not decode"
        assert page.locator("figure.plot svg").count() == 0
        for row in page.locator("section#summary table tbody tr").all():
            assert row.inner_text().strip()
        shot = page.screenshot(full_page=True)
        assert _pixel_spread(shot) > 10, "the page renders blank"
        if which == "full":
            (path.parent / "report_screenshot.png").write_bytes(shot)
            assert re.search(r"H100", page.locator("header.top").inner_text())
    finally:
        page.close()
