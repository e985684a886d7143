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
    base = make_runtime({"welcome": JOURNEY})
    rt = Runtime(base.store, base.project, env={**base.env, **env})
    try:
        ann = subscriber(rt.store, "ann@example.com")
        add_event(rt.store, ann, "signup", T0)
        run_tick(rt, "welcome", T0 + timedelta(minutes=5))
    finally:
        rt.close()
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
