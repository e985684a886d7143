"""Specification: the recipient pages speak the language of the e-mail they are opened from.
The preference center, the unsubscribe result, the double opt-in confirmation page and its
answers, and a link that does not work are in the contact's message locale (the contact's if a
catalog serves it, else policies.yaml `locale`, else English — as the mail was), with `<html
lang>` naming it; Nurture ships their German, and a project's catalog may reword them."""
from __future__ import annotations

import html as html_lib
import re
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from nurture.double_opt_in import request_opt_in
from nurture.send.system_mail import confirm_link
from nurture.tokens import make_token
from tests.conftest import DEFAULT_POLICIES, REPO
from tests.engine_fixtures import add_contact, journey_yaml, subscriber
from tests.test_web_site import SECRET, SYSTEM_TEMPLATES, running_site

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
# A page's language is the contact's locale read by one plain select: the same on both
# databases, so these run on SQLite only (the pages themselves run on PostgreSQL in
# test_web_unsubscribe and test_browser_preferences).
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _german_project(tmp_path, extra_po: str = "") -> None:
    """make_runtime's project (tmp_path/project) with the shipped translations/de.po (+ `extra_po`)."""
    folder = tmp_path / "project" / "translations"
    shutil.copytree(REPO / "nurture" / "skeleton" / "translations", folder)
    if extra_po:
        with (folder / "de.po").open("a", encoding="utf-8") as po:
            po.write("\n" + extra_po)


def _lang(page: str) -> str:
    return re.search(r'<html lang="([^"]+)">', page).group(1)


def _h1(page: str) -> str:
    return html_lib.unescape(re.search(r"<h1>(.*?)</h1>", page).group(1))


def _english_left(page: str) -> list[str]:
    """The English source texts of Nurture's own page words still on a page (their fixed parts)."""
    from nurture.rendering.i18n import built_in_catalogs
    german = built_in_catalogs().catalog("de")
    assert german, "the built-in German catalog"
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", page.split("<body>")[1]))
    text = re.sub(r"\s+", " ", text)
    left = []
    for msgid in german:
        for part in re.split(r"<[^>]+>|%\([a-z]+\)s", msgid):
            if len(part.strip()) > 3 and part.strip() in text:
                left.append(msgid)
    return left


def test_a_german_contacts_pages_are_german_from_preference_center_to_confirmation(make_runtime, tmp_path):
    _german_project(tmp_path)
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    anna = subscriber(rt.store, "anna@example.com", channels=("email", "sms"), phone="+4915112345678",
                      first_name="Anna", locale="de-AT")  # a regional variant: served by de.po
    ben = add_contact(rt.store, "ben@example.com", first_name="Ben", locale="de")
    with rt.store.engine.begin() as conn:
        request_opt_in(conn, rt.project.policies, ben, source="test:signup", now=NOW)
    with running_site(rt, NOW) as site:
        unsub = make_token(SECRET, "unsubscribe", anna, "marketing", "email")
        pages = {"preference center": site.http.get(f"/u/{unsub}"),
                 "preferences saved": site.http.post(f"/u/{unsub}/preferences", data={"channel": "email"}),
                 "unsubscribed": site.http.post(f"/u/{unsub}", data={"x": "1"}),
                 "confirm page": site.http.get(confirm_link(rt, ben)),
                 "confirmed": site.http.post(confirm_link(rt, ben)),
                 "already confirmed": site.http.post(confirm_link(rt, ben))}
    assert {name: r.status_code for name, r in pages.items()} == dict.fromkeys(pages, 200)
    assert {name: _lang(r.text) for name, r in pages.items()} == {
        "preference center": "de-AT", "preferences saved": "de-AT", "unsubscribed": "de-AT",
        "confirm page": "de", "confirmed": "de", "already confirmed": "de"}
    assert {name: _h1(r.text) for name, r in pages.items()} == {
        "preference center": "Ihre E-Mail-Einstellungen", "preferences saved": "Ihre E-Mail-Einstellungen",
        "unsubscribed": "Ihre E-Mail-Einstellungen", "confirm page": "Bestätigen Sie Ihr Abonnement",
        "confirmed": "Abonnement bestätigt", "already confirmed": "Bereits bestätigt"}
    assert "Ihre Einstellungen sind gespeichert." in pages["preferences saved"].text
    assert "Sie sind von den Marketing-E-Mails abgemeldet." in pages["unsubscribed"].text
    assert ">Ja, mein Abonnement bestätigen</button>" in pages["confirm page"].text
    assert "Einstellungen für <strong>anna@example.com</strong>." in pages["preference center"].text
    assert {name: _english_left(r.text) for name, r in pages.items()} == dict.fromkeys(pages, [])


def test_a_link_that_does_not_work_is_in_the_contacts_language_or_else_the_projects(make_runtime, tmp_path):
    """An expired confirmation names its contact: their language. A damaged link names no one:
    policies.yaml `locale` (served by de.po here)."""
    _german_project(tmp_path)
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES, policies=DEFAULT_POLICIES + "locale: de\n")
    carl = add_contact(rt.store, "carl@example.com", locale="de")
    with rt.store.engine.begin() as conn:
        request_opt_in(conn, rt.project.policies, carl, source="test:signup", now=NOW)
    with running_site(rt, NOW + timedelta(days=31)) as site:
        link = confirm_link(rt, carl)
        expired = site.http.post(link)
        damaged = site.http.get(link[:-3] + "abc")
        damaged_unsubscribe = site.http.post("/u/not-a-token")
    for page in (expired, damaged, damaged_unsubscribe):
        assert page.status_code == 400 and _lang(page.text) == "de" and _h1(page.text) == "Dieser Link funktioniert nicht"
        assert _english_left(page.text) == [] and 'role="alert"' in page.text
    assert "Diese Bestätigungsanfrage ist abgelaufen." in expired.text
    assert "Der Bestätigungslink ist beschädigt oder abgelaufen." in damaged.text


def test_a_german_contact_of_a_project_without_german_gets_english_pages_as_their_english_mail(make_runtime):
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    anna = subscriber(rt.store, "anna@example.com", locale="de")
    with running_site(rt, NOW) as site:
        page = site.http.get(f"/u/{make_token(SECRET, 'unsubscribe', anna, 'marketing', 'email')}").text
        damaged = site.http.get("/u/not-a-token").text
    assert (_lang(page), _h1(page)) == ("en", "Your e-mail preferences")
    assert (_lang(damaged), _h1(damaged)) == ("en", "This link does not work")


def test_the_projects_catalog_rewords_a_page_and_a_translation_typo_never_breaks_one(make_runtime, tmp_path):
    _german_project(tmp_path, 'msgid "Save preferences"\nmsgstr "Speichern"\n\n'
                              'msgid "Preferences for <strong>%(address)s</strong>."\n'
                              'msgstr "Einstellungen von <strong>%(adresse)s</strong>."\n')
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    anna = subscriber(rt.store, "anna@example.com", locale="de")
    with running_site(rt, NOW) as site:
        page = site.http.get(f"/u/{make_token(SECRET, 'unsubscribe', anna, 'marketing', 'email')}")
    assert page.status_code == 200 and 'id="save" class="secondary">Speichern</button>' in page.text
    # the project's entry names a placeholder the page does not pass: the built-in German instead
    assert "Einstellungen für <strong>anna@example.com</strong>." in page.text


def test_a_topic_is_named_in_the_contacts_language_when_the_catalog_has_it_and_always_escaped(make_runtime, tmp_path):
    _german_project(tmp_path, 'msgid "Coffee tips"\nmsgstr "Kaffee-Tipps"\n')
    news = journey_yaml("news", "- id: hi\n  send: {channel: email, template: hello, subject: Hi}",
                        extra="topic: coffee_tips")
    tips = journey_yaml("tips", "- id: hi\n  send: {channel: email, template: hello, subject: Hi}",
                        extra='topic: "<b>beans</b>"')
    rt = make_runtime({"news": news, "tips": tips}, templates=SYSTEM_TEMPLATES)
    anna = subscriber(rt.store, "anna@example.com", locale="de")
    with running_site(rt, NOW) as site:
        page = site.http.get(f"/u/{make_token(SECRET, 'unsubscribe', anna, 'marketing', 'email')}").text
    assert '">Kaffee-Tipps</label>' in page and "&lt;b&gt;beans&lt;/b&gt;</label>" in page and "<b>beans" not in page


def _html_lang(page: str) -> str:
    return re.search(r'<html lang="([^"]+)">', page).group(1)


def test_a_page_no_catalog_has_in_the_projects_language_is_english_and_says_so(make_runtime, tmp_path):
    """policies.yaml `locale: fr` and no catalogs (a shop writing French templates), or a fr.po
    for the shop's own templates only: Nurture's page words exist in English (and German) only,
    so the page is English — and `lang` says en, not fr over English words."""
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES, policies=DEFAULT_POLICIES + "locale: fr\n")
    anna = subscriber(rt.store, "anna@example.com", locale="fr")
    with running_site(rt, NOW) as site:
        page = site.http.get(f"/u/{make_token(SECRET, 'unsubscribe', anna, 'marketing', 'email')}").text
        damaged = site.http.get("/u/not-a-token").text
    assert "<h1>Your e-mail preferences</h1>" in page and "<h1>This link does not work</h1>" in damaged
    assert (_html_lang(page), _html_lang(damaged)) == ("en", "en")
