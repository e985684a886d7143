"""NURTURE_FROM_EMAIL written as a From header writes it (`Shop <shop@example.com>`): the
address is the sender address, the name the sender name (docs/settings.md). Used verbatim it
made `From: Nurture <Shop<shop@example.com>>`, a Message-ID ending in `example.com>>` and a
broken List-Unsubscribe mailto on every e-mail, with exit 0."""
from __future__ import annotations

import email
from datetime import timedelta
from email import policy

import pytest

from nurture.runtime import Runtime, run_tick
from nurture.settings import Settings
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 11, 16, 10)
JOURNEY = journey_yaml("welcome", """
    - id: hello
      send: {channel: email, template: hello, subject: "Hello"}
""")


@pytest.mark.parametrize("env, name", [
    ({"NURTURE_FROM_EMAIL": "Shop <shop@example.com>"}, "Shop"),
    ({"NURTURE_FROM_EMAIL": '"Shop, Inc." <shop@example.com>'}, "Shop, Inc."),
    ({"NURTURE_FROM_EMAIL": "Shop <shop@example.com>", "NURTURE_FROM_NAME": "The Team"}, "The Team"),
])
def test_a_sender_written_with_its_name_makes_well_formed_headers(make_runtime, env, name):
    rt, ann = _tick_one(make_runtime, env)
    (m,) = messages(rt.store, contact_id=ann)
    assert m.status == "sent", m.reason
    (path,) = (rt.data_dir / "outbox" / "email").rglob("*.eml")
    parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    (sender,) = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (name, "shop@example.com")
    assert parsed["Message-ID"].endswith("@example.com>") and ">>" not in parsed["Message-ID"]
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe>" in parsed["List-Unsubscribe"]


def test_a_plain_address_and_an_unreadable_value_stay_as_they_were():
    assert (Settings.from_env({"NURTURE_FROM_EMAIL": "shop@example.com"}).from_email,
            Settings.from_env({"NURTURE_FROM_EMAIL": "shop@example.com"}).from_name) == ("shop@example.com", None)
    assert Settings.from_env({"NURTURE_FROM_EMAIL": "Shop <a@b@c>"}).from_email == "Shop <a@b@c>"


@pytest.mark.parametrize("value, address, name", [
    ("news@bücher.example", "news@xn--bcher-kva.example", None),
    ("Bücherei <news@Bücher.example>", "news@xn--bcher-kva.example", "Bücherei"),
    ("jörg@bücher.example", "jörg@xn--bcher-kva.example", None),  # the local part is the server's to take
    ("news@xn--bcher-kva.example", "news@xn--bcher-kva.example", None),
    ("news@bü_cher.example", "news@bü_cher.example", None),  # no A-label form: kept, and named (below)
])
def test_the_sender_address_is_read_with_its_domain_in_ascii_form(value, address, name):
    settings = Settings.from_env({"NURTURE_FROM_EMAIL": value})
    assert (settings.from_email, settings.from_name, settings.is_set("from_email")) == (address, name, True)


@pytest.mark.parametrize("value, problem", [
    ("news@bücher.example", None),
    ("jörg@bücher.example", None),
    ("news@bü_cher.example", "NURTURE_FROM_EMAIL: the domain of 'news@bü_cher.example' has no IDNA A-label form"),
    ("news@🥨.example", "NURTURE_FROM_EMAIL: the domain of 'news@🥨.example' has no IDNA A-label form"),
    ("n\udcfcws@shop.example", "NURTURE_FROM_EMAIL: 'n\\udcfcws@shop.example' is not UTF-8 text"),
])
def test_a_sender_no_mail_server_could_take_is_named_and_reading_the_settings_never_fails(value, problem):
    found = Settings.from_env({"NURTURE_FROM_EMAIL": value}).sender_problem()  # no raise: SMS must not stop
    assert found is None if problem is None else found.startswith(problem), found


def _tick_one(make_runtime, env: dict) -> tuple[Runtime, int]:
    base = make_runtime({"welcome": JOURNEY})
    rt = Runtime(base.store, base.project, env={**base.env, **env})
    try:
        ann = subscriber(rt.store, "ann@example.com")
        add_event(rt.store, ann, "signup", T0)
        run_tick(rt, "welcome", T0 + timedelta(minutes=5))
    finally:
        rt.close()
    return rt, ann


def test_a_sender_on_an_international_domain_makes_ascii_headers_in_the_file_outbox(make_runtime):
    """NURTURE_FROM_EMAIL=news@bücher.example with the default (.eml) channel: the From address,
    the Message-ID and the List-Unsubscribe mailto carry the A-labels, and List-Unsubscribe stays
    a plain header (RFC 2369/8058: URLs in angle brackets). Before, the Message-ID held raw 8-bit
    and the whole List-Unsubscribe went out as RFC 2047 encoded-words, which no mailbox provider
    reads in that header: one-click unsubscribe was broken."""
    rt, ann = _tick_one(make_runtime, {"NURTURE_FROM_EMAIL": "news@bücher.example", "NURTURE_FROM_NAME": "Bücherei"})
    (m,) = messages(rt.store, contact_id=ann)
    assert m.status == "sent", m.reason
    (path,) = (rt.data_dir / "outbox" / "email").rglob("*.eml")
    raw = path.read_bytes()
    head = raw.split(b"\r\n\r\n")[0].decode("ascii")  # every header 7-bit
    unsubscribe = " ".join(head.split("List-Unsubscribe: ", 1)[1].split("\r\nList-Unsubscribe-Post")[0].split())
    assert unsubscribe.startswith("<http") and "=?" not in unsubscribe, unsubscribe
    assert unsubscribe.endswith(", <mailto:unsubscribe@xn--bcher-kva.example?subject=unsubscribe>"), unsubscribe
    parsed = email.message_from_bytes(raw, policy=policy.default)
    (sender,) = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Bücherei", "news@xn--bcher-kva.example")
    assert parsed["Message-ID"] == f"<nurture.{m.id}.welcome@xn--bcher-kva.example>"


def test_a_sender_domain_without_an_ascii_form_keeps_the_email_queued_naming_the_setting(make_runtime):
    rt, ann = _tick_one(make_runtime, {"NURTURE_FROM_EMAIL": "news@🥨.example"})
    (m,) = messages(rt.store, contact_id=ann)
    assert (m.status, m.attempts) == ("queued", 0)
    assert "NURTURE_FROM_EMAIL: the domain of 'news@🥨.example' has no IDNA A-label form" in m.reason, m.reason
    assert not (rt.data_dir / "outbox" / "email").exists() or not list((rt.data_dir / "outbox" / "email").rglob("*.eml"))
