"""The HTML report in a real browser: the demo's world (a small one, engine ticks) is reported
with `locale: de`, opened in headless Chromium (Debian's `chromium` + `chromium-driver`, as in
tests/test_browser_preferences.py) at a laptop's width, and checked the way a reader would look
at it — every section there, nothing wider than the window, figures that never wrap, chart axes
with ticks, no raw markdown, no "-0.0", numbers in German — and a screenshot is taken.

Skipped only when the binaries are missing and CI is not set; under CI it must run."""
from __future__ import annotations

import io
import os
import re
import shutil
from datetime import timedelta

import pytest
from rich.console import Console

from nurture.demo import run_demo
from tests.conftest import REPO
from tests.test_browser_preferences import CHROMEDRIVER, CHROMIUM, FLAGS
from tests.test_demo_data import _engine_ticks

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip("headless Chromium is not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                "run scripts/install-browser.sh", allow_module_level=True)

WIDTH = 1366


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "project"
    shutil.copytree(REPO / "journeys", root / "journeys")
    shutil.copytree(REPO / "templates", root / "templates")
    policies = root / "journeys" / "policies.yaml"
    policies.write_text(policies.read_text(encoding="utf-8") + "locale: de\n", encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("NURTURE_DATA_DIR", "NURTURE_DATABASE_URL")}
    ticks, state = _engine_ticks(root)
    try:
        run_demo(root, seed=3, run_ticks=ticks, console=Console(file=io.StringIO(), width=200), contacts=500,
                 days=12, resolution=timedelta(hours=4))
    finally:
        if "rt" in state:
            state["rt"].store.dispose()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return root / ".nurture" / "demo" / "report.html"


@pytest.fixture(scope="module")
def page(report_page, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WIDTH},900")
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.get(report_page.as_uri())
    yield driver
    driver.quit()


def test_the_report_shows_every_section_with_german_numbers_and_no_raw_markdown(page):
    from selenium.webdriver.common.by import By
    text = page.find_element(By.TAG_NAME, "body").text
    for heading in ("Overview", "Daily conversions", "Lead sources, KPIs and objectives", "Objectives of the project",
                    "Lead sources", "Attribution", "A/B split subject_test", "cart_abandonment"):
        assert heading in text, heading
    assert re.search(r"\d{1,3}\.\d{3},\d{2}[\xa0 ]€", text)  # 1.234,56 € (de), not 1,234.56 €
    assert "ROI (incremental)" in text and "not proof" not in text.split("Overview")[0]
    assert "**" not in text and "`" not in text
    assert not re.search(r"(?<![\w.])-0[.,]0(?!\d)", text) and "NaN" not in text and "None" not in text


def test_nothing_is_wider_than_the_window_and_figures_never_wrap(page):
    assert page.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    # A figure cell (no interval under it, not a list of reasons) is one line high.
    wrapped = page.execute_script("""
        const out = [];
        for (const td of document.querySelectorAll('td')) {
            if (td.classList.contains('wrap') || td.querySelector('br')) continue;
            const range = document.createRange(); range.selectNodeContents(td);
            if (range.getClientRects().length > 1) out.push(td.innerText);
        }
        return out;""")
    assert wrapped == []


def test_the_daily_chart_has_axes_with_ticks_and_the_screenshot_is_taken(page, tmp_path):
    from selenium.webdriver.common.by import By
    chart = page.find_element(By.CSS_SELECTOR, "svg[aria-label='daily conversions']")
    y_ticks = chart.find_elements(By.CSS_SELECTOR, "line.tick.y")
    x_ticks = chart.find_elements(By.CSS_SELECTOR, "line.tick.x")
    assert len(y_ticks) >= 3 and len(x_ticks) >= 3
    labels = [t.text for t in chart.find_elements(By.TAG_NAME, "text")]
    assert labels[0] == "0" and "conversions" in labels
    shot = tmp_path / "report.png"
    page.set_window_size(WIDTH, min(page.execute_script("return document.body.scrollHeight"), 8000))
    assert page.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page of tables and charts, not a blank one
