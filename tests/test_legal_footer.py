"""Specification: every marketing e-mail has a visible unsubscribe link and the sender's legal
details. A custom template without the link gets the standard footer appended at send time
(HTML and text, each checked on its own, in the message's language — the contact's, else the
policies' `locale` — the policies' `sender:` details escaped) — seen here
in what a real SMTP server receives; a template with its own link is left as it is; the shipped
layout shows `sender:`; transactional mail is exempt; `nurture validate` warns (exit 0) about a
marketing template without the link, with its location."""
from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest

from nurture.rendering.legal_footer import ensure_footer
from nurture.runtime import run_tick
from tests.conftest import DEFAULT_POLICIES, REPO
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber
from tests.test_send_promise import SECRET, T0
from tests.test_smtp_delivery import Recorder, smtp_server  # noqa: F401  (fixture)

SENDER = DEFAULT_POLICIES + ('sender: {company: "Kaffee & Co <GmbH>", address: "Hauptstr. 1, 10115 Berlin", '
                             'register: "HRB 12345, AG Charlottenburg", represented_by: "Anna Meier", '
                             'contact: "hallo@kaffee.example"}\n')
PLAIN = journey_yaml("promo", """
- id: hello
  send: {channel: email, template: plain, subject: "Hello"}
""")
RECEIPT = journey_yaml("receipt", """
- id: hello
  send: {channel: email, template: plain, subject: "Your receipt", purpose: transactional}
""")
TEMPLATES = {"email/plain.html": "<html><body><p>{{ _('Our autumn sale, %(name)s!', name=contact.first_name) }}</p>"
                                  "</body></html>",
             "email/plain.txt": "{{ _('Our autumn sale, %(name)s!', name=contact.first_name) }}"}
DE_PO = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n' \
        'msgid "Our autumn sale, %(name)s!"\nmsgstr "Unser Herbstverkauf, %(name)s!"\n'


def _in_german(tmp_path):
    """The project (make_runtime's, at tmp_path/project) translates its words into German."""
    (tmp_path / "project" / "translations").mkdir(parents=True, exist_ok=True)
    (tmp_path / "project" / "translations" / "de.po").write_text(DE_PO, encoding="utf-8")


def _smtp(make_runtime, port, journeys):
    rt = make_runtime(journeys, templates=TEMPLATES, policies=SENDER)
    rt.env.update({"NURTURE_EMAIL_BACKEND": "smtp", "NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port),
                   "NURTURE_SMTP_SECURITY": "none", "NURTURE_FROM_EMAIL": "news@shop.example",
                   "NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": "https://go.shop.example"})
    return rt


def test_a_custom_template_without_a_link_gets_the_footer_over_real_smtp(make_runtime, store, smtp_server, tmp_path):
    _in_german(tmp_path)
    recorder = Recorder()
    rt = _smtp(make_runtime, smtp_server(recorder), {"promo": PLAIN})
    cid = subscriber(store, "kim@example.de", first_name="Kim", locale="de")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    ((_, _, raw, _),) = recorder.received
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    unsubscribe = mail["List-Unsubscribe"].split(">")[0].lstrip("<")
    assert "Unser Herbstverkauf, Kim!" in html and f'href="{unsubscribe}"' in html and ">Abmelden</a>" in html
    assert "Kaffee &amp; Co &lt;GmbH&gt; · Hauptstr. 1, 10115 Berlin · HRB 12345, AG Charlottenburg · " \
           "Vertreten durch Anna Meier · hallo@kaffee.example" in html
    assert html.index("nurture-legal-footer") < html.lower().index("</body>")
    assert f"Abmelden: {unsubscribe}" in text and "Kaffee & Co <GmbH>" in text


def test_a_template_with_its_own_link_and_transactional_mail_are_left_alone():
    links = {"unsubscribe": "https://go.example/u/abc", "preferences": "https://go.example/u/abc", "home": ""}
    own = '<p>Hi</p><a href="https://go.example/u/abc">leave</a>'
    own_text = "Hi. Leave: https://go.example/u/abc"
    assert ensure_footer(own, own_text, links, {}, "en") == (own, own_text, False)
    html, text, appended = ensure_footer("<p>Hi</p>", "Hi", links, {"company": None}, "en")
    assert appended and html.startswith("<p>Hi</p><div") and "Unsubscribe: https://go.example/u/abc" in text


def test_each_part_is_checked_on_its_own_a_text_part_without_the_link_gets_the_text_footer():
    links = {"unsubscribe": "https://go.example/u/abc", "preferences": "https://go.example/u/abc", "home": ""}
    own = '<p>Hi</p><a href="https://go.example/u/abc">leave</a>'
    html, text, appended = ensure_footer(own, "Hi", links, {}, "en")
    assert appended and html == own and text.endswith("Unsubscribe: https://go.example/u/abc\n")


def _delivered(rt, store, journey: str, locale):
    cid = subscriber(store, "kim@example.de", first_name="Kim", locale=locale)
    add_event(store, cid, "signup", T0)
    run_tick(rt, journey, T0 + timedelta(minutes=1))
    (row,) = messages(store, contact_id=cid)
    raw = (rt.data_dir / "outbox" / "email" / journey / f"{row.id:09d}.eml").read_bytes()
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    return mail, mail.get_body(("html",)).get_content(), mail.get_body(("plain",)).get_content()


def test_a_marketing_mail_whose_own_txt_lacks_the_link_gets_the_text_footer_though_its_html_has_it(
        make_runtime, store):
    templates = {"email/plain.html": '<p>Our autumn sale</p><a href="{{ links.unsubscribe }}">Unsubscribe</a>',
                 "email/plain.txt": "Our autumn sale, {{ contact.first_name }}! https://shop.example/sale"}
    rt = make_runtime({"promo": PLAIN}, templates=templates, policies=SENDER)
    mail, html, text = _delivered(rt, store, "promo", "en")
    unsubscribe = mail["List-Unsubscribe"].split(">")[0].lstrip("<")
    assert "nurture-legal-footer" not in html  # the HTML has its own link
    assert f"Unsubscribe: {unsubscribe}" in text  # a text-only reader needs a way out too


@pytest.mark.parametrize("contact_locale, policies_locale", [
    ("DE", None),   # as a CSV export writes it: the templates read it as `de`
    (None, "de"),   # no locale of its own: policies.yaml `locale` is the message's
    ("de-AT", None),
])
def test_the_appended_footer_is_in_the_locale_the_templates_resolve(make_runtime, store, tmp_path, contact_locale,
                                                                     policies_locale):
    _in_german(tmp_path)
    policies = SENDER + (f"locale: {policies_locale}\n" if policies_locale else "")
    rt = make_runtime({"promo": PLAIN}, templates=TEMPLATES, policies=policies)
    _, html, text = _delivered(rt, store, "promo", contact_locale)
    assert "Unser Herbstverkauf, Kim!" in html and ">Abmelden</a>" in html and "Vertreten durch Anna Meier" in html
    assert "Abmelden: " in text


PL_PO = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: pl\\n"\n\n' \
        'msgid "Our autumn sale, %(name)s!"\nmsgstr "Nasza jesienna wyprzedaż, %(name)s!"\n\n' \
        'msgid "You receive this because you signed up with us."\n' \
        'msgstr "Otrzymujesz tę wiadomość, ponieważ zapisałeś się u nas."\n\n' \
        'msgid "Unsubscribe"\nmsgstr "Wypisz się"\n\nmsgid "Preferences"\nmsgstr "Ustawienia"\n\n' \
        'msgid "Represented by %(name)s"\nmsgstr "Reprezentowana przez %(name)s"\n'


def test_the_appended_footer_speaks_the_projects_catalog_a_polish_mail_gets_a_polish_footer(
        make_runtime, store, tmp_path):
    """The footer's words are the shipped layout's msgids, looked up in the project's catalogs
    like the layout's own: a project that translates its layout into Polish needs nothing more."""
    (tmp_path / "project" / "translations").mkdir(parents=True)
    (tmp_path / "project" / "translations" / "pl.po").write_text(PL_PO, encoding="utf-8")
    rt = make_runtime({"promo": PLAIN}, templates=TEMPLATES, policies=SENDER)
    mail, html, text = _delivered(rt, store, "promo", "pl")
    unsubscribe = mail["List-Unsubscribe"].split(">")[0].lstrip("<")
    assert "Nasza jesienna wyprzedaż, Kim!" in html
    assert "Otrzymujesz tę wiadomość, ponieważ zapisałeś się u nas." in html and ">Wypisz się</a>" in html \
        and ">Ustawienia</a>" in html and "Reprezentowana przez Anna Meier" in html
    assert "You receive" not in html and "Unsubscribe" not in html and "Represented" not in html
    assert f"Wypisz się: {unsubscribe}" in text and "Unsubscribe" not in text


def test_a_german_contact_of_a_project_without_german_gets_an_english_mail_with_an_english_footer(
        make_runtime, store):
    """No catalog serves `de`: the message is English (its words, the source text) — and so is
    its footer, not German under an English mail."""
    rt = make_runtime({"promo": PLAIN}, templates=TEMPLATES, policies=SENDER)
    _, html, text = _delivered(rt, store, "promo", "de")
    assert "Our autumn sale, Kim!" in html
    assert "You receive this because you signed up with us." in html and ">Unsubscribe</a>" in html \
        and "Represented by Anna Meier" in html
    assert "Abmelden" not in html and "Vertreten" not in html and "Abmelden" not in text


def test_transactional_mail_gets_no_marketing_footer(make_runtime, store):
    rt = make_runtime({"receipt": RECEIPT}, templates=TEMPLATES, policies=SENDER)
    cid = subscriber(store, "kim@example.com", first_name="Kim")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "receipt", T0 + timedelta(minutes=1))
    (row,) = messages(store, contact_id=cid)
    eml = (rt.data_dir / "outbox" / "email" / "receipt" / f"{row.id:09d}.eml").read_bytes()
    assert b"nurture-legal-footer" not in eml


def test_the_shipped_layout_shows_the_sender(make_runtime, store):
    layout = (REPO / "templates" / "layouts" / "base.html").read_text(encoding="utf-8")
    rt = make_runtime({"promo": journey_yaml("promo", "- id: hello\n  send: {channel: email, template: news, "
                                                      "subject: Hi}")}, policies=SENDER,
                      templates={"layouts/base.html": layout, "email/news.html": '{% extends "layouts/base.html" %}'
                                 "{% block content %}<p>News</p>{% endblock %}"})
    cid = subscriber(store, "kim@example.com", first_name="Kim", locale="en")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    (row,) = messages(store, contact_id=cid)
    mail = email.message_from_bytes((rt.data_dir / "outbox" / "email" / "promo" / f"{row.id:09d}.eml").read_bytes(),
                                    policy=email.policy.default)
    html = mail.get_body(("html",)).get_content()
    assert "Represented by Anna Meier" in html and "nurture-legal-footer" not in html  # the layout's own footer


def test_validate_warns_about_a_marketing_template_without_the_link_and_exits_0(tmp_path):
    from tests.conftest import write_project
    from tests.test_privacy_erase import nurture
    root = write_project(tmp_path / "shop", {"promo": PLAIN, "receipt": RECEIPT},  # transactional: no warning
                         templates={**TEMPLATES, "email/partial.html": '{% include "partials/foot.html" %}',
                                    "partials/foot.html": '<a href="{{ links["unsubscribe"] }}">leave</a>'})
    run = nurture(root, "validate")
    assert run.returncode == 0, run.stdout + run.stderr
    warnings = [line for line in run.stdout.splitlines() if "warning:" in line]
    assert warnings == [
        "journeys/promo.yaml:5:38: warning: template 'plain' has no visible unsubscribe link "
        "({{ links.unsubscribe }}): Nurture appends the standard legal footer to every marketing e-mail from it "
        "— extend layouts/base.html or add the link"], run.stdout
    assert "1 warning(s)" in run.stdout


def test_a_link_in_an_included_partial_or_the_layout_counts(tmp_path):
    from nurture.rendering.templates import TemplateLibrary
    from tests.conftest import write_project
    root = write_project(tmp_path / "p", {}, templates={
        "email/partial.html": '<p>x</p>{% include "partials/foot.html" %}',
        "partials/foot.html": '<a href="{{ links["unsubscribe"] }}">leave</a>',
        "email/plain.html": "<p>no way out</p>",
        "email/laid_out.html": '{% extends "layouts/base.html" %}{% block content %}x{% endblock %}',
        "layouts/base.html": (REPO / "templates" / "layouts" / "base.html").read_text(encoding="utf-8")})
    library = TemplateLibrary(root / "templates")
    assert library.mentions("partial", "links", "unsubscribe") and library.mentions("laid_out", "links", "unsubscribe")
    assert not library.mentions("plain", "links", "unsubscribe")
