"""Specification: one template context. What `nurture preview` shows a marketer is rendered
from exactly the variables delivery renders the real message from — the same contact view,
trigger event, journey, step and links — because both build them with the one builder
(nurture.send.context.template_context) from the same facts."""
from __future__ import annotations

import email
import email.policy
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest

from nurture import tokens
from nurture.runtime import run_tick
from nurture.send import render
from nurture.send.context import ContextRow, recipient_links, template_context
from nurture.send.preview import preview_journey
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)
EVERYTHING = ("Hi {{ contact.first_name }} {{ contact.last_name }} ({{ contact.id }}, {{ contact.email }}, "
              "{{ contact.phone }}, {{ contact.country }}, {{ contact.locale }}, {{ contact.timezone }}, "
              "{{ contact.lifecycle_stage }}, {{ contact.score }}), plan {{ contact.plan }} / "
              "{{ contact.attributes.plan }}; cart {{ event.cart_value }} / {{ event.properties.sku }} from "
              "{{ event.name }} at {{ event.occurred_at }}; {{ journey.name }}: {{ journey.description }}; "
              "step {{ step.id }}; {{ links.unsubscribe }}")
TEMPLATES = {"email/everything.html": f"<p>{EVERYTHING}</p>", "sms/everything.txt": EVERYTHING}
JOURNEY = journey_yaml("cart", """
    - id: mail
      send: {channel: email, template: everything, subject: "{{ contact.first_name }}, {{ event.sku }} is waiting"}
    - id: text
      send: {channel: sms, template: everything}
    """, trigger="{event: add_to_cart}", extra="description: Bring shoppers back to their cart.")


@pytest.fixture
def frozen_tokens(monkeypatch):
    """Signed links carry their expiry: one clock for delivery and preview."""
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: 1_780_000_000.0))


def test_preview_and_delivery_render_the_same_contact_and_event_from_the_same_context(
        make_runtime, store, monkeypatch, frozen_tokens):
    rt = make_runtime({"cart": JOURNEY}, templates=TEMPLATES)
    cid = subscriber(store, "ann@example.com", channels=("email", "sms"), first_name="Ann", last_name="Lee",
                     phone="+4915112345678", country="DE", locale="de", timezone="Europe/Berlin",
                     score=12.5, attributes={"plan": "pro"})
    add_event(store, cid, "add_to_cart", T0, {"cart_value": 42, "sku": "A1"})
    delivered: dict[str, dict] = {}

    def recording(row, journey, links, *imprint, **extra):
        delivered[row.step_id] = context = template_context(row, journey, links, *imprint, **extra)
        return context

    monkeypatch.setattr(render, "template_context", recording)
    run_tick(rt, "cart", T0 + timedelta(minutes=1))
    assert sorted((m.step_id, m.status) for m in messages(store)) == [("mail", "sent"), ("text", "sent")]

    previews = {p.step_id: p for p in preview_journey(rt.project, store, "cart", email="ann@example.com",
                                                      public_url=rt.public_url, secret_key=rt.secret_key)}

    assert set(previews) == set(delivered) == {"mail", "text"}
    for step_id, preview in previews.items():
        assert preview.context == delivered[step_id]
    assert delivered["mail"]["event"]["properties"] == {"cart_value": 42, "sku": "A1"}
    assert delivered["mail"]["contact"]["plan"] == "pro"

    (mail,) = messages(store, step_id="mail")
    (path,) = (rt.data_dir / "outbox" / "email" / "cart").glob(f"{mail.id:09d}.eml")
    sent = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert sent["Subject"] == previews["mail"].subject == "Ann, A1 is waiting"
    assert sent.get_body(("plain",)).get_content().strip() == previews["mail"].text.strip()
    (sms,) = [json.loads(line) for line in (rt.data_dir / "outbox" / "sms.jsonl").read_text().splitlines()]
    assert sms["body"] == previews["text"].text


def test_a_preview_without_a_contact_renders_the_sample_contact_through_the_same_builder(make_runtime, store):
    rt = make_runtime({"cart": JOURNEY.replace("template: everything", "template: hello")}, templates=TEMPLATES)
    (mail, _) = preview_journey(rt.project, store, "cart", event_properties={"cart_value": 9, "sku": "B2"})
    assert mail.subject == "Alex, B2 is waiting"
    assert mail.context["event"] == {"cart_value": 9, "sku": "B2", "name": "add_to_cart",
                                     "properties": {"cart_value": 9, "sku": "B2"}, "occurred_at": None}
    assert mail.context["journey"] == {"name": "cart", "description": "Bring shoppers back to their cart."}
    assert mail.context["links"]["unsubscribe"].startswith("http://localhost:8000/u/")


def test_a_preview_renders_the_event_that_enrolled_the_contact_not_a_later_one(make_runtime, store):
    """Delivery renders with the enrollment's trigger event: so does the preview — a later cart
    below the trigger's `where` (it enrolled nothing) is never what the contact is mailed about."""
    journey = JOURNEY.replace("trigger: {event: add_to_cart}",
                              "trigger: {event: add_to_cart, where: {property: {cart_value: {gte: 20}}}}")
    rt = make_runtime({"cart": journey.replace("template: everything", "template: hello")}, templates=TEMPLATES)
    cid = subscriber(store, "ann@example.com", channels=("email", "sms"), phone="+4915112345678", first_name="Ann")
    add_event(store, cid, "add_to_cart", T0, {"cart_value": 120, "sku": "BIG"})
    run_tick(rt, "cart", T0 + timedelta(minutes=1))
    add_event(store, cid, "add_to_cart", T0 + timedelta(minutes=3), {"cart_value": 5, "sku": "SMALL"})
    (mail, _) = preview_journey(rt.project, store, "cart", email="ann@example.com")
    assert mail.subject == "Ann, BIG is waiting"


def test_a_preview_without_a_contact_or_event_renders_every_shipped_journey_with_sample_properties(
        tmp_path, sqlite_template):
    """`nurture preview JOURNEY` on the shipped project: the sample contact's trigger event has
    a sample value for each documented property its templates read (cart_value, order_id, …)."""
    from pathlib import Path
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    spec = load_project(Path(__file__).resolve().parents[1])
    assert not spec.errors
    import shutil
    shutil.copyfile(sqlite_template, tmp_path / "nurture.db")
    store = open_store(f"sqlite:///{tmp_path / 'nurture.db'}")
    for name in spec.journeys:
        assert preview_journey(spec, store, name), name
    (first,) = preview_journey(spec, store, "cart_abandonment", step_id="reminder")
    assert "129" in first.html


def test_the_context_exposes_attributes_under_the_columns_and_the_trigger_event_under_its_name():
    row = ContextRow(contact_id=7, email="bo@example.com", phone=None, first_name="Bo", last_name=None,
                     country=None, locale=None, timezone=None, lifecycle_stage="lead", score=0.0,
                     attributes={"plan": "pro", "email": "shadowed@example.com"}, step_id="mail",
                     event_name="signup", event_properties={"name": "shadowed", "source": "ad"})
    links = recipient_links("https://go.example", "s" * 32, 7, "marketing", "email")
    context = template_context(row, {"name": "welcome", "description": ""}, links)
    assert context["contact"]["email"] == "bo@example.com"  # a column wins over an attribute of its name
    assert context["contact"]["plan"] == "pro"
    assert context["contact"]["attributes"] == {"plan": "pro", "email": "shadowed@example.com"}
    assert context["event"]["name"] == "signup" and context["event"]["source"] == "ad"
    assert context["step"] == {"id": "mail"}
    assert context["links"]["unsubscribe"] == context["links"]["preferences"]
    assert context["links"]["unsubscribe"].startswith("https://go.example/u/")


def test_a_preview_shows_what_delivery_sends_utm_tags_public_url_footer_and_sms_segments(make_runtime, store):
    """Preview builds each message through delivery's render_message: an SMS's tagged link on the
    configured public URL (and so its segment count), the footer delivery appends to a template
    without an unsubscribe link; its links are signed with a throwaway secret."""
    from nurture.rendering.email_message import sms_segments
    journey = journey_yaml("cart", """
    - id: mail
      send: {channel: email, template: plain, subject: "Hi"}
    - id: text
      send: {channel: sms, template: nudge}
    """, trigger="{event: add_to_cart}")
    nudge = ("Hi {{ contact.first_name }}, your cart ({{ event.cart_value | money }}) is still waiting: "
             "{{ links.home }}/cart Reply STOP to opt out.")
    rt = make_runtime({"cart": journey}, templates={"email/plain.html": "<html><body><p>Hi</p></body></html>",
                                                   "sms/nudge.txt": nudge})
    rt.env["NURTURE_PUBLIC_URL"] = "https://go.shop.example"
    cid = subscriber(store, "alex@example.com", channels=("email", "sms"), first_name="Alexandra",
                     phone="+4915112345678", locale="en")
    add_event(store, cid, "add_to_cart", T0, {"cart_value": 158.0})
    run_tick(rt, "cart", T0 + timedelta(minutes=1))
    assert sorted(m.status for m in messages(store)) == ["sent", "sent"]
    (sent,) = [json.loads(line) for line in (rt.data_dir / "outbox" / "sms.jsonl").read_text().splitlines()]

    mail, text = preview_journey(rt.project, store, "cart", email="alex@example.com", env=rt.env)
    assert text.text == sent["body"]
    assert "https://go.shop.example/cart?utm_source=nurture&utm_medium=sms&utm_campaign=cart" in text.text
    assert sms_segments(text.text) == sms_segments(sent["body"]) == ("GSM-7", 2)
    assert "nurture-legal-footer" in mail.html and "Unsubscribe: https://go.shop.example/u/" in mail.text
    token = mail.context["links"]["unsubscribe"].rsplit("/", 1)[-1]
    assert tokens.verify_token(rt.secret_key, token, "unsubscribe") is None  # a throwaway secret: no working link
