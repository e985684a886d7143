"""The preference center in a real browser: headless Chromium (Debian's `chromium` +
`chromium-driver`, driven by selenium with explicit paths — nothing is downloaded) opens the
unsubscribe link of a delivered e-mail, changes preferences with clicks on labels, submits,
and the database shows it. Install the browser with scripts/install-browser.sh.

Skipped only when the binaries are missing and CI is not set; under CI it must run."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.runtime.tick import run_tick
from nurture.store.tables import consent_t, suppression_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, contact_row, journey_yaml, subscriber
from tests.test_web_site import SYSTEM_TEMPLATES, running_site

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
NOW = utc(2026, 3, 2, 12, 0)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip("headless Chromium is not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                "run scripts/install-browser.sh", allow_module_level=True)

NEWS = journey_yaml("news", """
- id: first
  send: {channel: email, template: hello, subject: "News"}
""", extra="topic: product_news")
TIPS = journey_yaml("tips", """
- id: tip
  send: {channel: email, template: hello, subject: "A tip"}
""", extra="topic: tips")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _submit(browser, button_id: str) -> None:
    """Click a submit button and wait until the page it posts to has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from selenium.common.exceptions import WebDriverException
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, button_id).click()

    def replaced(_driver) -> bool:
        # Chrome answers a lookup of a node of the page being replaced either "stale" or, racing
        # the navigation, "node does not belong to the document": both mean the old page is gone.
        try:
            page.is_enabled()
            return False
        except WebDriverException:
            return True
    WebDriverWait(browser, 30).until(replaced)
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")


def _ledger(store, contact_id):
    with store.engine.connect() as conn:
        return [(r.channel, r.status, r.source) for r in conn.execute(
            select(consent_t).where(consent_t.c.contact_id == contact_id).order_by(consent_t.c.id))]


def test_a_recipient_changes_preferences_and_unsubscribes_in_headless_chromium(make_runtime, browser):
    from selenium.webdriver.common.by import By
    rt = make_runtime({"news": NEWS, "tips": TIPS}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, NOW) as site:
        cid = subscriber(site.store, "ann@example.com", channels=("email", "sms"), phone="+4915112345678",
                         first_name="Ann")
        add_event(site.store, cid, "signup", NOW - dt.timedelta(minutes=1))
        run_tick(rt, "news", NOW)
        [eml] = (rt.data_dir / "outbox" / "email" / "news").glob("*.eml")
        html = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default).get_body(("html",)).get_content()
        link = re.search(r'href="([^"]+)">unsubscribe</a>', html, re.I).group(1)  # the visible link in the body

        browser.get(link)
        assert browser.title == "Your e-mail preferences"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        tips = browser.find_element(By.XPATH, "//label[normalize-space()='Tips']")
        sms = browser.find_element(By.XPATH, "//label[normalize-space()='Marketing text messages (SMS)']")
        tips_box = browser.find_element(By.ID, tips.get_attribute("for"))
        assert tips_box.is_selected() and browser.find_element(By.ID, "channel-sms").is_selected()
        tips.click()  # a click on the label toggles its checkbox
        sms.click()
        assert not tips_box.is_selected()
        _submit(browser, "save")

        notice = browser.find_element(By.ID, "notice")
        assert notice.text == "Your preferences are saved." and notice.get_attribute("role") == "status"
        assert contact_row(site.store, cid).attributes["topics_opted_out"] == ["tips"]
        assert _ledger(site.store, cid)[-1] == ("sms", "revoked", "web:preference_center")
        assert not browser.find_element(By.ID, "channel-sms").is_selected()
        assert browser.find_element(By.ID, "channel-email").is_selected()

        _submit(browser, "unsubscribe")
        assert "You are unsubscribed from marketing e-mail." in browser.find_element(By.ID, "notice").text
        assert _ledger(site.store, cid)[-1] == ("email", "revoked", "web:unsubscribe")
        with site.store.engine.connect() as conn:
            assert [(s.channel, s.reason) for s in conn.execute(select(suppression_t))] == [("email", "unsubscribed")]
        assert not browser.find_element(By.ID, "channel-email").is_selected()
