"""The report in a real browser: headless Chromium opens it from file://, every plot and
thumbnail loads, the console stays clean, and a screenshot is kept for a person to look at.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them); the
test fails, rather than skips, when they are missing.
"""

from __future__ import annotations

import shutil

import pytest

from clipcurate.curation.audit.report import write_report
from clipcurate.curation.audit.synthetic import write_synthetic_run

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("headless Chromium is needed for the audit report test: install Debian's "
                    "'chromium' and 'chromium-driver' (apt-get install chromium chromium-driver; "
                    "'make test' does this)")
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def test_report_opens_in_headless_chromium(tmp_path, browser):
    a = write_synthetic_run(tmp_path / "recipe-a", 500, seed=9, images=True, shard_rows=120)
    b = write_synthetic_run(tmp_path / "recipe-b", 500, seed=9, images=True, shard_rows=120,
                            features={"clip_score", "dedup"})
    report = write_report(a.out, compare=b.out, samples=12, per_reason=3)
    page = report.index.read_text()

    browser.get(report.index.resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    expected = page.count("<img ")
    assert len(images) == expected and expected > 30
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken[:5]}"
    sources = {src for src, _, _ in images}
    assert {"assets/a_funnel.png", "assets/b_funnel.png", "assets/a_metaclip_counts.png",
            "assets/a_clip_score.png", "assets/b_clip_score.png"} <= sources
    assert sum(src.startswith("assets/thumbs-a/") for src in sources) >= 12
    assert "assets/b_metaclip_counts.png" not in sources  # B has no MetaCLIP: said, not drawn

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height, 16_000))
    shot = tmp_path / "report-screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")
    headings = [h.text for h in browser.find_elements("css selector", "section > h2")]
    # Warnings (a stage that rejected a large share) comes right after the comparison when any.
    main = [h for h in headings if h != "Warnings"]
    assert main[:3] == ["Comparison", "Overview", "Funnel"] and "Samples" in main
    assert "Warnings" not in headings or headings.index("Warnings") == 1
