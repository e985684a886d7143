"""Specification: rendering — a sandboxed Jinja environment with StrictUndefined and HTML
autoescape; an e-mail is multipart/alternative (text + HTML with its CSS inlined once per
template, not per recipient), with an RFC 2047 subject the standard library parses back and a
Message-ID derived from the message row. Checked on the real .eml files a tick writes."""
from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import premailer
import pytest

from nurture.runtime import run_tick
from nurture.rendering.email_message import rfc_message_id
from nurture.rendering.inline_css import inline_template_source
from tests.conftest import REPO, utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)
TEMPLATES = {
    "email/offer.html": ("<html><head><style>p {color: #333} .cta {font-weight: bold}</style></head>"
                         "<body><p>Hello {{ contact.first_name }}</p><p class=\"cta\">Code {{ contact.coupon_code }}</p>"
                         "</body></html>"),
    "email/evil.html": "<p>{{ contact.email.__class__.__mro__[1].__subclasses__() }}</p>",
}
SUBJECT = "Grüße 🎉 {{ contact.first_name }}, dein persönlicher Rabatt wartet auf dich – nur heute!"


def send_journey(template: str = "offer") -> dict:
    return {"j": journey_yaml("j", f'- id: offer\n  send: {{channel: email, template: {template}, subject: "{SUBJECT}"}}')}


def tick_for(make_runtime, store, people: dict[str, dict], template: str = "offer"):
    rt = make_runtime(send_journey(template), templates=TEMPLATES)
    ids = {}
    for email_address, fields in people.items():
        ids[email_address] = subscriber(store, email_address, **fields)
        add_event(store, ids[email_address], "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    return rt, ids


def parsed(rt, message_pk: int) -> email.message.EmailMessage:
    (path,) = (rt.data_dir / "outbox" / "email" / "j").glob(f"{message_pk:09d}.eml")
    raw = path.read_bytes()
    assert raw.isascii()  # every header encoded, bodies base64
    return email.message_from_bytes(raw, policy=email.policy.default)


JOERG = {"first_name": "Jörg", "last_name": "Müller", "attributes": {"coupon_code": "SAVE10"}}


def test_an_email_is_multipart_alternative_with_text_and_html(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"joerg@example.com": JOERG})
    (m,) = messages(store)
    msg = parsed(rt, m.id)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text, html = (p.get_content() for p in msg.iter_parts())
    assert "Hello Jörg" in text and "Code SAVE10" in text and "<p" not in text
    assert "Hello Jörg" in html


def test_subject_and_names_with_umlauts_and_emoji_are_rfc2047_and_parse_back(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"joerg@example.com": JOERG})
    (m,) = messages(store)
    msg = parsed(rt, m.id)
    expected = "Grüße 🎉 Jörg, dein persönlicher Rabatt wartet auf dich – nur heute!"
    assert msg["subject"] == expected
    assert m.subject == expected  # the log keeps the rendered subject
    assert msg["to"].addresses[0].display_name == "Jörg Müller"
    assert msg["to"].addresses[0].addr_spec == "joerg@example.com"
    raw = (rt.data_dir / "outbox" / "email" / "j" / f"{m.id:09d}.eml").read_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    encoded_lines = [line for line in head.split(b"\r\n") if b"=?utf-8?" in line]
    assert len(encoded_lines) >= 3  # the subject is folded over several lines
    assert all(len(line) <= 76 for line in encoded_lines)  # RFC 2047 §2


def test_message_id_is_derived_from_the_message_row(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"joerg@example.com": JOERG, "ann@example.com": {"attributes": {"coupon_code": "X"}}})
    for m in messages(store):
        msg = parsed(rt, m.id)
        assert msg["message-id"] == rfc_message_id(m.id, "j", "shop@example.com") == f"<nurture.{m.id}.j@example.com>"


def test_css_is_inlined_into_style_attributes(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"joerg@example.com": JOERG})
    (m,) = messages(store)
    html = list(parsed(rt, m.id).iter_parts())[1].get_content()
    assert '<p style="color:#333">Hello Jörg</p>' in html
    assert 'style="color:#333; font-weight:bold"' in html or 'style="font-weight:bold; color:#333"' in html
    assert "<style" not in html


def test_css_is_inlined_once_per_template_not_per_recipient(make_runtime, store, monkeypatch):
    runs = []

    class CountingPremailer(premailer.Premailer):
        def transform(self, *args, **kwargs):
            runs.append(1)
            return super().transform(*args, **kwargs)

    rt = make_runtime(send_journey(), templates=TEMPLATES)
    for i in range(12):
        cid = subscriber(store, f"c{i}@example.com", first_name=f"C{i}", attributes={"coupon_code": str(i)})
        add_event(store, cid, "signup", T0)
    monkeypatch.setattr(premailer, "Premailer", CountingPremailer)
    inline_template_source.cache_clear()  # (the project's check inlined it already)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [m.status for m in messages(store)] == ["sent"] * 12
    assert len(runs) == 1  # twelve recipients, one inlining of the template file
    loader_cache = rt.templates.html_env.loader._cache
    assert list(loader_cache) == ["email/offer.html"]
    assert 'style="color:#333"' in loader_cache["email/offer.html"][1]  # the cached source is inlined
    # the same file loaded again (another runtime, its own loader): inlined from the process's cache
    again = make_runtime(send_journey(), templates=TEMPLATES)
    again.templates.html_env.get_template("email/offer.html")
    assert len(runs) == 1
    # an edited file is a new source: inlined anew
    edited = make_runtime(send_journey(), templates={**TEMPLATES, "email/offer.html": TEMPLATES["email/offer.html"] + " "})
    edited.templates.html_env.get_template("email/offer.html")
    assert len(runs) == 2


def test_html_is_autoescaped_but_subject_and_text_are_not(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"x@example.com": {"first_name": "<script>x</script>",
                                                             "attributes": {"coupon_code": "A&B"}}})
    (m,) = messages(store)
    msg = parsed(rt, m.id)
    text, html = (p.get_content() for p in msg.iter_parts())
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>" not in html
    assert "A&amp;B" in html
    assert msg["subject"].startswith("Grüße 🎉 <script>x</script>,")
    assert "<script>x</script>" in text and "A&B" in text


def test_a_missing_variable_fails_that_message_and_the_rest_of_the_batch_is_sent(make_runtime, store):
    rt, ids = tick_for(make_runtime, store, {"a@example.com": {"attributes": {"coupon_code": "A"}},
                                             "nocode@example.com": {},
                                             "b@example.com": {"attributes": {"coupon_code": "B"}}})
    by_contact = {m.contact_id: m for m in messages(store)}
    broken = by_contact[ids["nocode@example.com"]]
    assert broken.status == "failed" and broken.reason.startswith("render_error") and "coupon_code" in broken.reason
    assert {by_contact[ids[e]].status for e in ("a@example.com", "b@example.com")} == {"sent"}
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 2


def test_a_template_reaching_for_unsafe_attributes_fails_in_the_sandbox(make_runtime, store):
    rt, _ = tick_for(make_runtime, store, {"a@example.com": {}}, template="evil")
    (m,) = messages(store)
    assert m.status == "failed" and m.reason.startswith("render_error")
    assert "unsafe" in m.reason
    assert list((rt.data_dir / "outbox").rglob("*.eml")) == []


def test_the_sandbox_refuses_unsafe_attributes_directly(make_project):
    from jinja2.exceptions import SecurityError

    from nurture.rendering.templates import TemplateLibrary
    library = TemplateLibrary(make_project({}, templates=TEMPLATES) / "templates")
    with pytest.raises(SecurityError):
        library.render_email("evil", "x", {"contact": {"email": "a@example.com"}})


@pytest.mark.parametrize("source,context,expected", [
    ("{{ c.first_name }}", {"first_name": "Ada"}, "Ada"),                     # a key, read as an attribute
    ("{{ c._private }}", {"_private": "kept"}, "kept"),                        # underscore keys are data too
    ("{{ c.items()|list|length }}", {"items": "x", "a": 1}, "2"),              # a dict method wins over a key
    ("{{ c.get('plan', 'free') }}", {}, "free"),
    ("{{ c.nested.deep }}", {"nested": {"deep": "yes"}}, "yes"),
    ("{{ c.missing is defined }}", {}, "False"),
])
def test_template_attribute_lookups_on_dicts_behave_as_in_jinja(make_project, source, context, expected):
    from nurture.rendering.templates import TemplateLibrary
    library = TemplateLibrary(make_project({}, templates=TEMPLATES) / "templates")
    assert library.string(source).render({"c": context}) == expected


def test_a_missing_key_read_as_an_attribute_is_still_a_strict_undefined_error(make_project):
    from jinja2.exceptions import SecurityError, UndefinedError

    from nurture.rendering.templates import TemplateLibrary
    library = TemplateLibrary(make_project({}, templates=TEMPLATES) / "templates")
    with pytest.raises(UndefinedError, match="has no attribute 'coupon'"):
        library.string("{{ c.coupon }}").render({"c": {}})
    with pytest.raises(SecurityError):  # dunder attributes still go through the sandbox's checks
        library.string("{{ c.__class__.__mro__ }}").render({"c": {}})


def test_the_file_channel_writes_international_addresses_and_fails_an_unwritable_message_alone(tmp_path):
    """`uni@exämple.com` with a name formataddr must encode raised UnicodeEncodeError, and the
    file channel had no per-message handling: the whole batch stayed queued, on every tick."""
    from integrations.file_channels import FileEmailChannel
    from nurture.registry import OutgoingMessage
    channel = FileEmailChannel(tmp_path / "outbox", "shop@example.com", "Shop")

    def msg(pk, to, name, subject="Hi"):
        return OutgoingMessage(message_pk=pk, rfc_message_id=f"<nurture.{pk}.j@example.com>", contact_id=pk,
                               channel="email", journey="j", step_id="hello", purpose="marketing", to=to,
                               to_name=name, subject=subject, html="<p>Hi</p>", text="Hi")

    results = channel.send_batch([msg(1, "uni@exämple.com", "Jürgen"), msg(2, "ann@example.com", "Ann", "Hi \ud800"),
                                  msg(3, "jü@example.com", 'Jo "J" Doe'), msg(4, "bob@example.com", "Bob")])
    assert [(r.status, r.reason) for r in results] == [("sent", None), ("failed", "build_error: UnicodeEncodeError"),
                                                       ("sent", None), ("sent", None)]
    to = {}
    for pk in (1, 3, 4):
        parsed = email.message_from_string(channel.path_for(pk, "j").read_bytes().decode("utf-8"),
                                               policy=email.policy.SMTPUTF8)
        address = parsed["To"].addresses[0]
        to[pk] = (address.display_name, address.addr_spec)
    assert to == {1: ("Jürgen", "uni@xn--exmple-cua.com"), 3: ('Jo "J" Doe', "jü@example.com"),
                  4: ("Bob", "bob@example.com")}


def test_a_name_or_subject_that_looks_like_an_encoded_word_is_shown_as_written():
    """`=?utf-8?b?QUJD?=` as a first name went into To: and Subject: as it was, and mail
    clients decoded it: the reader saw "ABC", not the name Nurture stored."""
    from datetime import datetime, timezone

    from nurture.rendering.email_message import build_email_bytes
    raw = build_email_bytes(message_id="<nurture.1.j@example.com>", from_addr="shop@example.com", from_name="Shop",
                            to_addr="ann@example.com", to_name="=?utf-8?b?QUJD?=", subject="Hi =?utf-8?q?ABC?=!",
                            html="<p>Hi</p>", text="Hi", date=datetime(2026, 3, 4, tzinfo=timezone.utc))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"].addresses[0].display_name == "=?utf-8?b?QUJD?="
    assert str(parsed["Subject"]) == "Hi =?utf-8?q?ABC?=!"


def test_a_steps_preheader_is_the_hidden_escaped_element_right_after_body_and_the_preview_shows_it(
        make_runtime, store):
    from nurture.send.preview import preview_journey
    journey = {"j": journey_yaml("j", '- id: offer\n  send: {channel: email, template: offer, subject: "Hi", '
                                      'preheader: "Only today: 20% off for {{ contact.first_name }}"}')}
    rt = make_runtime(journey, templates=TEMPLATES)
    cid = subscriber(store, "kim@example.com", first_name="<b>Kim</b> & Co", attributes={"coupon_code": "K"})
    add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    (row,) = messages(store, contact_id=cid)
    html = parsed(rt, row.id).get_body(("html",)).get_content()
    after_body = html.split("<body>", 1)[1]
    assert after_body.startswith('<div class="preheader" style="display:none;')
    assert after_body.split("</div>", 1)[0].endswith(">Only today: 20% off for &lt;b&gt;Kim&lt;/b&gt; &amp; Co")
    assert "Only today" not in parsed(rt, row.id).get_body(("plain",)).get_content()
    (preview,) = preview_journey(rt.project, store, "j", email="kim@example.com")
    assert preview.preheader == "Only today: 20% off for <b>Kim</b> & Co"
    assert "Only today: 20% off for &lt;b&gt;Kim&lt;/b&gt; &amp; Co</div>" in preview.html


def test_the_derived_text_part_turns_markup_a_message_or_its_translation_carries_into_text(tmp_path):
    from nurture.rendering.templates import TemplateLibrary
    (tmp_path / "templates" / "email").mkdir(parents=True)
    (tmp_path / "templates" / "email" / "t.html").write_text(
        '<p>{{ _("Read <strong>our guide</strong>, %(name)s", name=contact.first_name) }}</p>'
        '<p>{{ _(\'See <a href="https://shop.example/faq">the FAQ</a>\') }}</p>', encoding="utf-8")
    (tmp_path / "translations").mkdir()
    (tmp_path / "translations" / "de.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Read <strong>our guide</strong>, %(name)s"\n'
        'msgstr "Lesen Sie <em>unseren Leitfaden</em> &amp; mehr, %(name)s"\n', encoding="utf-8")
    library = TemplateLibrary(tmp_path / "templates")
    faq = "See the FAQ (https://shop.example/faq)\n"
    for locale, expected in (("en", "Read our guide, <Kim>\n" + faq), ("de", "Lesen Sie unseren Leitfaden & mehr, <Kim>\n" + faq)):
        rendered = library.render_email("t", "x", {"contact": {"locale": locale, "first_name": "<Kim>"}})
        assert rendered.text == expected  # the contact's name is data, kept as written
        assert "&lt;Kim&gt;" in rendered.html and ("<strong>" in rendered.html or "<em>" in rendered.html)


def _shipped(name: str, event: dict, locale: str):
    from nurture.rendering.templates import TemplateLibrary
    ctx = {"contact": {"locale": locale, "first_name": "Anna", "id": 1},
           "links": {"unsubscribe": "https://go.example/u/t", "preferences": "https://go.example/u/t",
                     "home": "https://shop.example"},
           "imprint": dict.fromkeys(["company", "address", "register", "represented_by", "contact"]),
           "journey": {"name": "j", "description": ""}, "step": {"id": "s"}, "event": event}
    return TemplateLibrary(REPO / "templates").render_email(name, "x", ctx)


@pytest.mark.parametrize("locale, code_line, topic_line", [
    ("en", "Your code CART10 is still valid until tonight.", "Thanks for your interest in ROI & you. Your copy is ready:"),
    ("de", "Ihr Code CART10 gilt noch bis heute Abend.", "Danke für Ihr Interesse an ROI & you. Ihr Exemplar ist bereit:"),
])
def test_shipped_last_call_and_b2b_intro_have_no_raw_tags_in_text_and_a_styled_coupon_box(locale, code_line,
                                                                                          topic_line):
    last_call = _shipped("cart/last_call", {"cart_value": 150}, locale)
    assert code_line in last_call.text.splitlines()
    # the code box is styled inline like cart/incentive's (clients that ignore <style> show it too)
    box = last_call.html.split("CART10")[0].rsplit("<span", 1)[-1]
    assert 'class="code"' in box and "border:2px dashed" in box
    intro = _shipped("b2b/intro", {"topic": "ROI & you"}, locale)
    assert topic_line in intro.text.splitlines()
    assert "<strong>ROI &amp; you</strong>" in intro.html
    assert "<" not in last_call.text + intro.text


def test_a_subject_with_a_long_run_without_spaces_keeps_every_header_line_under_998():
    """RFC 5322 §2.1.1: a header line is at most 998 characters; folding happens only at white
    space, so a subject from contact data without spaces (a URL, a list of SKUs) goes as
    encoded-words, which split anywhere — and reads back the same."""
    from datetime import datetime, timezone

    from nurture.rendering.email_message import build_email_bytes
    subject = "Your cart: " + "x" * 1200
    raw = build_email_bytes(message_id="<nurture.1.j@example.com>", from_addr="shop@example.com", from_name="Shop",
                            to_addr="ann@example.com", to_name="Ann", subject=subject,
                            html="<p>hi</p>", text="hi", date=datetime(2026, 3, 2, tzinfo=timezone.utc))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]) == subject
