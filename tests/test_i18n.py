"""Localization: gettext catalogs per locale (translations/<locale>.po, read with Babel) picked
by the contact's locale, money / number / date filters in that locale, and `nurture validate`
warning about a message a catalog lacks."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nurture.rendering.templates import TemplateLibrary
from nurture.spec.project import load_project
from tests.conftest import write_project

DE_PO = '''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"

msgid "Still thinking"
msgstr "Noch unentschlossen"

msgid "Thank you for your order, %(name)s!"
msgstr "%(name)s, danke für Ihre Bestellung!"

#, fuzzy
msgid "friend"
msgstr "Freund (unsicher)"
'''


@pytest.fixture
def library(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "translations").mkdir()
    (tmp_path / "translations" / "de.po").write_text(DE_PO, encoding="utf-8")
    return TemplateLibrary(tmp_path / "templates", currency="EUR", locale=None)


@pytest.mark.parametrize("locale, expected", [
    ("de", "Noch unentschlossen | &lt;Ann&gt;, danke für Ihre Bestellung! | 158,00\u00a0€ | 1.234,5 | 21.11.2026"),
    ("de-AT", "Noch unentschlossen | &lt;Ann&gt;, danke für Ihre Bestellung! | €\u00a0158,00 | 1.234,5 | 21.11.2026"),
    ("en", "Still thinking | Thank you for your order, &lt;Ann&gt;! | €158.00 | 1,234.5 | Nov 21, 2026"),
    (None, "Still thinking | Thank you for your order, &lt;Ann&gt;! | €158.00 | 1,234.5 | Nov 21, 2026"),
    ("klingon-ish", "Still thinking | Thank you for your order, &lt;Ann&gt;! | €158.00 | 1,234.5 | Nov 21, 2026"),
])
def test_words_and_numbers_follow_the_contacts_locale(library, locale, expected):
    template = library.html_env.from_string(
        '{{ _("Still thinking") }} | {{ _("Thank you for your order, %(name)s!", name=contact.first_name) }} | '
        '{{ event.value | money }} | {{ event.cart_value | number }} | {{ event.occurred_at | date }}')
    context = {"contact": {"locale": locale, "first_name": "<Ann>"},
               "event": {"value": 158, "cart_value": "1234.5", "occurred_at": datetime(2026, 11, 21, 10, tzinfo=timezone.utc)}}
    assert template.render(context) == expected


def test_a_fuzzy_or_missing_translation_shows_the_source_and_no_name_means_no_stray_comma(library):
    subject = library.string('{{ _("Still thinking") }}{{ ", " ~ contact.first_name if contact.first_name }}?')
    assert subject.render({"contact": {"locale": "de", "first_name": None}}) == "Noch unentschlossen?"
    assert library.string('{{ _("friend") }}').render({"contact": {"locale": "de"}}) == "friend"


def test_the_project_locale_is_the_default_and_money_may_name_its_currency(tmp_path):
    (tmp_path / "templates").mkdir()
    library = TemplateLibrary(tmp_path / "templates", currency="CHF", locale="de_CH")
    text = library.string('{{ 12.5 | money }} / {{ 12.5 | money("USD") }} / {{ 2 | number(2) }}')
    assert text.render({"contact": {"locale": None}}) == "CHF\u00a012.50 / $\u00a012.50 / 2.00"  # Babel keeps amount and symbol together


def test_validate_warns_about_a_message_a_catalog_lacks(tmp_path):
    root = write_project(tmp_path / "p", {"j": (
        "name: j\ntrigger: {event: signup}\nsteps:\n  - id: hi\n"
        "    send: {channel: email, template: t, subject: \"{{ _('Still thinking') }} {{ _('Welcome aboard') }}\"}\n")},
        templates={"email/t.html": "<p>{{ _('Still thinking') }} {{ _('See you') }}</p><a href=\"{{ links.unsubscribe }}\">x</a>"})
    (root / "translations").mkdir()
    (root / "translations" / "de.po").write_text(DE_PO, encoding="utf-8")
    spec = load_project(root)
    assert not spec.errors
    assert [str(w) for w in spec.warnings] == [
        'journeys/j.yaml:5:50: warning: no translation of "Welcome aboard" in translations/de.po (that locale gets the source text)',
        'templates/email/t.html:1:1: warning: no translation of "See you" in translations/de.po (that locale gets the source text)']
