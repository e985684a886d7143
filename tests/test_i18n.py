"""Localization: gettext catalogs per locale (translations/<locale>.po, read with Babel) picked
by the contact's locale, money / number / date filters in that locale, and `nurture validate`
warning about a message a catalog lacks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from nurture.rendering.templates import RenderError, TemplateLibrary
from nurture.runtime import run_tick
from nurture.send.preview import preview_journey
from nurture.spec.project import load_project
from nurture.test_send import SeedSendError, send_test
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

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


@pytest.mark.parametrize("value, expected", [
    (1e26, "€100,000,000,000,000,000,000,000,000.00"),
    (10 ** 30, "€1,000,000,000,000,000,000,000,000,000,000.00"),
    ("1e300", "€1" + ",000" * 100 + ".00"),  # a float's digits as they are written
])
def test_money_formats_any_finite_number_babel_rounds_at_28_digits(library, value, expected):
    # decimal's default 28 digits: 1e26 with two decimals raised InvalidOperation, and the
    # message failed with "render_error: [<class 'decimal.InvalidOperation'>]"
    text = library.string("{{ v | money }}").render({"contact": {"locale": "en"}, "v": value})
    assert text == expected
    assert library.string("{{ v | number }}").render({"contact": {"locale": "en"}, "v": value}) == expected[1:-3]


def test_a_whole_number_too_large_to_show_is_a_render_error_that_says_so(library):
    with pytest.raises(RenderError, match="a whole number of more than 400 digits is too large to show"):
        library.string("{{ v | money }}").render({"contact": {}, "v": 10 ** 500})


def test_a_fuzzy_or_missing_translation_shows_the_source_and_no_name_means_no_stray_comma(library):
    subject = library.string('{{ _("Still thinking") }}{{ ", " ~ contact.first_name if contact.first_name }}?')
    assert subject.render({"contact": {"locale": "de", "first_name": None}}) == "Noch unentschlossen?"
    assert library.string('{{ _("friend") }}').render({"contact": {"locale": "de"}}) == "friend"


def test_the_project_locale_is_the_default_and_money_may_name_its_currency(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "translations").mkdir()
    (tmp_path / "translations" / "de.po").write_text(DE_PO, encoding="utf-8")  # de_CH: served by de.po
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


# A translator's typo: the msgstr names a placeholder the template's _() call does not pass.
TYPO_PO = '''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"

#, python-format
msgid "Thank you, %(name)s!"
msgstr "Danke, %(nme)s!"
'''
TYPO_JOURNEY = {"promo": journey_yaml("promo", """
- id: hello
  send: {channel: email, template: t, subject: "Hi"}
""")}
TYPO_TEMPLATES = {"email/t.html": '<p>{{ _("Thank you, %(name)s!", name=contact.first_name) }}</p>'
                                  '<a href="{{ links.unsubscribe }}">u</a>'}


def _typo_runtime(make_runtime, make_project):
    root = make_project(TYPO_JOURNEY, templates=TYPO_TEMPLATES)
    (root / "translations").mkdir(exist_ok=True)
    (root / "translations" / "de.po").write_text(TYPO_PO, encoding="utf-8")
    return make_runtime(TYPO_JOURNEY, templates=TYPO_TEMPLATES)


def test_a_translation_with_a_misspelt_placeholder_fails_that_message_as_a_render_error_naming_the_entry(
        make_runtime, make_project, store):
    rt = _typo_runtime(make_runtime, make_project)
    t0 = utc(2026, 3, 4, 10, 0)
    en = subscriber(store, "en@example.com", first_name="Kim", locale="en")
    de = subscriber(store, "de@example.com", first_name="Kim", locale="de")
    for cid in (en, de):
        add_event(store, cid, "signup", t0)
    run_tick(rt, "promo", t0 + timedelta(minutes=1))
    assert [m.status for m in messages(store, contact_id=en)] == ["sent"]  # the rest of the batch goes out
    (bad,) = messages(store, contact_id=de)
    assert bad.status == "failed"
    assert bad.reason == ('render_error: the translation of "Thank you, %(name)s!" in translations/de.po:6 '
                          'uses %(nme)s, which the call does not pass (it passes: name)'), bad.reason


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_preview_and_test_send_report_a_misspelt_translation_placeholder_as_a_template_error(
        make_runtime, make_project, store):
    rt = _typo_runtime(make_runtime, make_project)
    subscriber(store, "de@example.com", first_name="Kim", locale="de")
    with pytest.raises(RenderError, match=r"translations/de.po:6 uses %\(nme\)s"):  # preview: "template error", exit 1
        preview_journey(rt.project, store, "promo", email="de@example.com")
    with pytest.raises(SeedSendError, match=r"template error in step 'hello': the translation of"):
        send_test(rt, "promo", "hello", "seed@qa.example", contact_email="de@example.com")


def test_a_misspelt_placeholder_in_the_source_text_is_a_render_error_too(library):
    template = library.html_env.from_string('{{ _("Hello %(nam)s", name=contact.first_name) }}')
    with pytest.raises(RenderError, match=r'_\("Hello %\(nam\)s"\) uses %\(nam\)s, which the call does not pass'):
        template.render({"contact": {"locale": "en", "first_name": "Ann"}})


def test_validate_warns_about_a_translation_whose_placeholders_differ_from_its_msgid(tmp_path):
    root = write_project(tmp_path / "p", TYPO_JOURNEY, templates=TYPO_TEMPLATES)
    (root / "translations").mkdir()
    (root / "translations" / "de.po").write_text(TYPO_PO, encoding="utf-8")
    spec = load_project(root)
    assert not spec.errors
    assert [str(w) for w in spec.warnings] == [
        'translations/de.po:6:1: warning: the translation of "Thank you, %(name)s!" uses %(nme)s, which its msgid '
        'does not have (every message that uses it fails: render_error) and drops %(name)s']


@pytest.mark.parametrize("contact_zone, default_zone, value, expected", [
    # 18:00 on 21 November in Los Angeles is 02:00 on 22 November in UTC
    ("America/Los_Angeles", None, datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc), "November 21, 2026"),
    ("America/Los_Angeles", None, "2026-11-22T02:00:00Z", "November 21, 2026"),
    ("America/Los_Angeles", None, datetime(2026, 11, 22, 2, 0), "November 21, 2026"),  # naive: UTC, as stored
    (None, "America/Los_Angeles", "2026-11-22T02:00:00+00:00", "November 21, 2026"),    # the policies' zone
    ("Mars/Olympus_Mons", "America/Los_Angeles", "2026-11-22T02:00:00Z", "November 21, 2026"),  # unknown: default
    ("Asia/Tokyo", "America/Los_Angeles", "2026-11-21T16:00:00Z", "November 22, 2026"),  # the contact's first
    (None, None, "2026-11-22T02:00:00Z", "November 22, 2026"),                          # no zone at all: UTC
    ("America/Los_Angeles", None, "2026-11-22", "November 22, 2026"),                   # a bare date is itself
])
def test_the_date_filter_shows_the_day_where_the_recipient_is(tmp_path, contact_zone, default_zone, value, expected):
    (tmp_path / "templates").mkdir()
    library = TemplateLibrary(tmp_path / "templates", timezone=default_zone)
    template = library.html_env.from_string("{{ event.at | date('long') }}")
    assert template.render({"contact": {"locale": "en", "timezone": contact_zone}, "event": {"at": value}}) == expected


def test_the_date_filter_falls_back_to_the_policies_time_zone_in_delivery_and_validate(tmp_path):
    """A contact without a zone sees the day of policies.yaml's `timezone`: the library the
    tick renders with (Runtime.templates) and the one validate and preview read (ProjectSpec)."""
    from nurture.runtime import Runtime
    from nurture.store.db import open_store
    from tests.conftest import DEFAULT_POLICIES
    root = write_project(tmp_path / "shop", {}, policies=DEFAULT_POLICIES.replace("timezone: UTC",
                                                                                  "timezone: America/Los_Angeles"))
    spec = load_project(root)
    at = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)  # 18:00 on the 21st in Los Angeles
    context = {"contact": {"locale": "en", "timezone": None}, "event": {"at": at}}
    store = open_store("sqlite://")
    try:
        for library in (spec.templates, Runtime(store, spec).templates):
            assert library.html_env.from_string("{{ event.at | date('long') }}").render(context) == "November 21, 2026"
    finally:
        store.dispose()


PLURAL_JOURNEY = {"j": journey_yaml("j", "- {id: m, send: {channel: email, template: cart, subject: Cart}}")}
PLURAL_TEMPLATE = {"email/cart.html": '<p>{{ ngettext("You left %(n)s item in your cart.", '
                                      '"You left %(n)s items in your cart.", count) }}</p>'}
PLURAL_PO = {
    # what `pybabel extract` + `init` make of that ngettext(): ONE entry, the form picked by Plural-Forms
    "de": ('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
           '"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
           'msgid "You left %(n)s item in your cart."\nmsgid_plural "You left %(n)s items in your cart."\n'
           'msgstr[0] "Sie haben %(n)s Artikel im Warenkorb gelassen."\n'
           'msgstr[1] "Sie haben %(n)s Artikel im Warenkorb gelassen (alle noch da)."\n'),
    # three forms: 1, 2-4 (not 12-14), 5+
    "pl": ('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
           '"Plural-Forms: nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);\\n"\n\n'
           'msgid "You left %(n)s item in your cart."\nmsgid_plural "You left %(n)s items in your cart."\n'
           'msgstr[0] "%(n)s produkt"\nmsgstr[1] "%(n)s produkty"\nmsgstr[2] "%(n)s produktów"\n'),
}


@pytest.mark.parametrize("locale, n, expected", [
    ("de", 1, "Sie haben 1 Artikel im Warenkorb gelassen."),
    ("de", 3, "Sie haben 3 Artikel im Warenkorb gelassen (alle noch da)."),
    ("pl", 1, "1 produkt"), ("pl", 3, "3 produkty"), ("pl", 5, "5 produktów"), ("pl", 22, "22 produkty"),
    ("pl", 12, "12 produktów"),
    ("fr", 3, "You left 3 items in your cart."),  # no catalog: the source's own form
])
def test_a_plural_entry_gives_the_form_its_catalogs_plural_rule_picks(tmp_path, locale, n, expected):
    """`pybabel extract` makes one msgid/msgid_plural entry of an ngettext() call; its form for n
    is the one the catalog's Plural-Forms picks — so languages with three forms work — and
    validate does not call such an entry missing."""
    root = write_project(tmp_path / "p", PLURAL_JOURNEY, templates=PLURAL_TEMPLATE)
    (root / "translations").mkdir()
    for code, text in PLURAL_PO.items():
        (root / "translations" / f"{code}.po").write_text(text, encoding="utf-8")
    spec = load_project(root)
    assert not spec.errors and not [w for w in spec.warnings if "no translation" in str(w)], spec.warnings
    html = spec.templates.html_env.from_string(PLURAL_TEMPLATE["email/cart.html"]).render(
        {"contact": {"locale": locale}, "count": n})
    assert html == f"<p>{expected}</p>"


@pytest.mark.parametrize("default, contact_locale, expected", [
    (None, "de_AT", "de-AT"), (None, None, "en"), ("de_CH", None, "de-CH"),
    ("de", "fr", "de"),  # no fr.po: the words are the project's German, and so is lang
    ("fr", "pt-BR", "fr"),  # no catalog serves pt-BR: the project's own language (it writes French)
    (None, "pt-BR", "en"),  # … and without one, the source text's, English
    ("de", "en-GB", "en-GB"),  # the source language needs no catalog
    ("de", '"><script>', "de"),  # an unusable locale of a contact: the project's
])
def test_lang_gives_the_html_lang_of_the_locale_the_words_follow(tmp_path, default, contact_locale, expected):
    (tmp_path / "templates").mkdir()
    (tmp_path / "translations").mkdir()
    (tmp_path / "translations" / "de.po").write_text(DE_PO, encoding="utf-8")
    library = TemplateLibrary(tmp_path / "templates", locale=default)
    html = library.html_env.from_string('<html lang="{{ lang() }}">').render({"contact": {"locale": contact_locale}})
    assert html == f'<html lang="{expected}">'


@pytest.mark.parametrize("locale", ["pt-BR", "fr", "es"])
def test_a_locale_without_a_catalog_renders_one_language_words_lang_dates_and_money_in_english(library, locale):
    """No catalog serves the contact's locale: the words are the source text, and `lang()`,
    month and day names and number formats are English too — never "Your order of 8 de março"."""
    html = library.html_env.from_string(
        '<html lang="{{ lang() }}"><p>{{ _("Still thinking") }} {{ event.occurred_at | date("long") }}'
        ' ({{ event.occurred_at | date("full") }}) {{ event.value | money }} {{ event.cart_value | number }}</p>').render(
        {"contact": {"locale": locale, "first_name": "Ana"},
         "event": {"occurred_at": datetime(2026, 3, 8, 12, tzinfo=timezone.utc), "value": 1234.5, "cart_value": 1234.5}})
    assert html == ('<html lang="en"><p>Still thinking March 8, 2026 (Sunday, March 8, 2026) €1,234.50 1,234.5</p>')


def test_a_contact_without_a_catalog_gets_the_projects_language_when_a_catalog_serves_it(library):
    """policies.yaml `locale: de` with de.po: a `fr` contact (no fr.po) reads the German the
    project writes — German words, `lang="de"`, German dates and money — one language again."""
    library = TemplateLibrary(library.root, currency="EUR", locale="de")  # the fixture's de.po
    html = library.html_env.from_string(
        '<html lang="{{ lang() }}"><p>{{ _("Still thinking") }} {{ d | date("long") }} {{ 158 | money }}</p>').render(
        {"contact": {"locale": "fr"}, "d": datetime(2026, 3, 8, 12, tzinfo=timezone.utc)})
    assert html == '<html lang="de"><p>Noch unentschlossen 8. März 2026 158,00\u00a0€</p>'


def test_a_shop_writing_its_templates_in_german_without_catalogs_keeps_german_formats(tmp_path):
    """policies.yaml `locale: de` and no catalog at all: the templates are written in German, so
    a German contact's message is German throughout — `lang`, dates, money — and one in a
    language the shop does not write gets the shop's German, not English formats in German text."""
    (tmp_path / "email").mkdir()
    library = TemplateLibrary(tmp_path, currency="EUR", locale="de")
    template = library.html_env.from_string(
        '<html lang="{{ lang() }}"><p>Ihre Bestellung vom {{ d | date("long") }}: {{ 158 | money }}</p>')
    day = datetime(2026, 3, 8, 12, tzinfo=timezone.utc)
    assert template.render({"contact": {"locale": "de-AT"}, "d": day}) == \
        '<html lang="de-AT"><p>Ihre Bestellung vom 8. März 2026: €\u00a0158,00</p>'
    assert template.render({"contact": {"locale": "pt-BR"}, "d": day}) == \
        '<html lang="de"><p>Ihre Bestellung vom 8. März 2026: 158,00\u00a0€</p>'
    assert template.render({"contact": {"locale": "en-GB"}, "d": day}) == \
        '<html lang="de"><p>Ihre Bestellung vom 8. März 2026: 158,00\u00a0€</p>'  # the source text is German


def test_the_shipped_layout_and_preview_follow_the_policies_locale_and_show_the_preheader(tmp_path):
    """A German shop's mail to a contact without a locale is German: the layout's `lang` says so,
    and `nurture preview` prints the preheader line inboxes show after the subject."""
    import os

    from tests.cli_inproc import run_cli
    root = tmp_path / "shop"
    env = {**os.environ, "NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
           "NURTURE_DATA_DIR": str(root / ".nurture"), "COLUMNS": "200"}
    assert run_cli(["init", str(root)], env).returncode == 0
    policies = root / "journeys" / "policies.yaml"
    policies.write_text(policies.read_text(encoding="utf-8") + "\nlocale: de\n", encoding="utf-8")
    welcome = root / "journeys" / "welcome.yaml"
    text = welcome.read_text(encoding="utf-8")
    assert "subject:" in text
    welcome.write_text(text.replace("subject:", 'preheader: "Ihr Vorteil wartet"\n      subject:', 1), encoding="utf-8")
    result = run_cli(["preview", "welcome", "--html"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Preheader: Ihr Vorteil wartet" in result.stdout
    assert '<html lang="de">' in result.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the catalog's reading: one backend is enough
def test_a_catalog_that_cannot_be_read_is_a_located_warning_and_its_locale_gets_the_source_text(
        make_runtime, make_project, store, capsys):
    """A de.po saved as Latin-1 used to stop loading the project ("internal error:
    UnicodeDecodeError"), so no journey ticked; a malformed line had Babel print bare WARNING
    lines naming no file. Now: a warning at file:line, German contacts get the source text."""
    root = make_project(TYPO_JOURNEY, templates=TYPO_TEMPLATES)
    (root / "translations").mkdir(exist_ok=True)
    (root / "translations" / "de.po").write_bytes(b'msgid "Thank you, %(name)s!"\nmsgstr "Sch\xf6n, %(name)s!"\n')
    (root / "translations" / "fr.po").write_text('msgid "Thank you, %(name)s!"\nmsgstr "Merci, %(name)s !"\n'
                                                 'this line is no PO\n', encoding="utf-8")
    spec = load_project(root)
    assert not spec.errors
    warnings = [str(w) for w in spec.warnings]
    assert any(w.startswith("translations/de.po:2:1: warning: cannot be read (")
               and w.endswith("de gets the source text") for w in warnings), warnings
    assert any(w.startswith("translations/fr.po:3:1: warning: ") and "Babel skips the line" in w
               for w in warnings), warnings
    assert "WARNING" not in capsys.readouterr().out
    rt = make_runtime(TYPO_JOURNEY, templates=TYPO_TEMPLATES)
    t0 = utc(2026, 3, 4, 10, 0)
    de = subscriber(store, "de@example.com", first_name="Kim", locale="de")
    fr = subscriber(store, "fr@example.com", first_name="Kim", locale="fr")
    for cid in (de, fr):
        add_event(store, cid, "signup", t0)
    run_tick(rt, "promo", t0 + timedelta(minutes=1))
    assert [m.status for m in messages(store, contact_id=de)] == ["sent"]
    assert [m.status for m in messages(store, contact_id=fr)] == ["sent"]
    assert "Merci, Kim !" in preview_journey(rt.project, store, "promo", email="fr@example.com")[0].html
    assert "Thank you, Kim!" in preview_journey(rt.project, store, "promo", email="de@example.com")[0].html
