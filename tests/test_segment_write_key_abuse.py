"""What the public Segment write key (docs/ingest-segment.md: it is in every page of the shop)
must not let a stranger do to another person's contact: claim their address for a contact of
the stranger's own — whose sign-up, events and double opt-in confirmation the stranger's contact
would then get — or move their phone, and with it the SMS their consent covers. (Found by the
twenty-first session's write-key audit.)"""
from __future__ import annotations

import base64
import time
from datetime import timedelta

from sqlalchemy import select

from nurture.runtime.tick import run_tick
from nurture.send.system_mail import SYSTEM_JOURNEY
from nurture.store.tables import contact_t, event_t
from tests.conftest import utc
from tests.engine_fixtures import journey_yaml, messages, subscriber
from tests.test_web_site import SYSTEM_TEMPLATES, running_site

NOW = utc(2026, 3, 2, 12, 0)
KEY = "wk_test_segment_write_key_1"
INGEST = "ingest-token-for-tests-42"
ATTACKER, VICTIM = "mallory@evil.example", "victim@example.com"
VICTIM_PHONE, ATTACKER_PHONE = "+4915112345678", "+4915199999999"


def basic() -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


def _contact_of(store, email):
    with store.engine.connect() as conn:
        return conn.execute(select(contact_t).where(contact_t.c.email == email)).one_or_none()


def _row(store, cid):
    with store.engine.connect() as conn:
        return conn.execute(select(contact_t).where(contact_t.c.id == cid)).one()

def _attack(http):
    # 1. the attacker's own contact, with the attacker's address
    assert http.post("/v1/identify", json={"userId": "mallory-1", "traits": {"email": ATTACKER}},
                     headers=basic()).status_code == 200
    # 2. the same user id "identifies" with the victim's address: recorded as the attacker's second e-mail
    assert http.post("/v1/identify", json={"userId": "mallory-1", "traits": {"email": VICTIM}},
                     headers=basic()).status_code == 200


def test_victim_signup_over_events_is_routed_to_the_attackers_contact(make_runtime):
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, NOW, NURTURE_WRITE_KEY=KEY, NURTURE_INGEST_TOKEN=INGEST) as site:
        _attack(site.http)
        # 3. later, the real owner of victim@example.com signs up on the shop's form (POST /events)
        signup = {"event_id": "form-1", "email": VICTIM, "event": "signup", "timestamp": NOW.isoformat()}
        r = site.http.post("/events", json=signup, headers={"Authorization": f"Bearer {INGEST}"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while not messages(site.store, journey=SYSTEM_JOURNEY) and time.monotonic() < deadline:
            time.sleep(0.05)
        confirmations = messages(site.store, journey=SYSTEM_JOURNEY)
        # expected: the confirmation asking the victim to confirm goes to the victim's address
        assert [m.address for m in confirmations] == [VICTIM], \
            f"double opt-in confirmation for the victim's signup sent to {[m.address for m in confirmations]}"


def test_victim_identify_merges_victims_visitor_into_the_attackers_contact(make_runtime):
    rt = make_runtime({})
    with running_site(rt, NOW, NURTURE_WRITE_KEY=KEY) as site:
        _attack(site.http)
        # the real owner browses anonymously, then identifies on the shop with their own address
        assert site.http.post("/v1/track", json={"anonymousId": "victim-browser", "event": "Product Viewed",
                                                  "messageId": "v-1"}, headers=basic()).status_code == 200
        assert site.http.post("/v1/identify", json={"anonymousId": "victim-browser",
                                                     "traits": {"email": VICTIM, "firstName": "Vera"}},
                              headers=basic()).status_code == 200
        attacker = _contact_of(site.store, ATTACKER)
        with site.store.engine.connect() as conn:
            owner_of_victim_event = conn.execute(select(event_t.c.contact_id)
                                                 .where(event_t.c.event_id == "v-1")).scalar()
        # expected: the victim's browsing and name stay on a contact of the victim's own address
        assert owner_of_victim_event != attacker.id, "victim's events merged into the attacker's contact"
        assert attacker.first_name != "Vera", "victim's name written onto the attacker's contact"
        assert _contact_of(site.store, VICTIM) is not None, "no contact has the victim's address"


def test_a_track_naming_the_victims_email_redirects_their_consented_sms_to_another_number(make_runtime, store):
    """Victim: e-mail + phone + confirmed SMS marketing consent (given for +49151 12345678).
    Attacker: one /v1/track naming the victim's e-mail with context.traits.phone = another
    number. The victim's phone is overwritten and the shop's marketing SMS — sent on the
    strength of a consent given for the old number — goes to the attacker's number."""
    journey = journey_yaml("promo", """
    - id: text
      send: {channel: sms, template: hello}
    """, trigger="{event: add_to_cart}")
    rt = make_runtime({"promo": journey})
    victim = subscriber(store, "victim@example.com", channels=("email", "sms"), phone=VICTIM_PHONE,
                        first_name="Vera")
    with running_site(rt, NOW, NURTURE_WRITE_KEY=KEY) as site:
        r = site.http.post("/v1/track", json={
            "anonymousId": "attacker-browser", "event": "add_to_cart", "messageId": "atk-1",
            "context": {"traits": {"email": "victim@example.com", "phone": ATTACKER_PHONE}}}, headers=basic())
        assert r.status_code == 200
    run_tick(rt, "promo", NOW + timedelta(minutes=1))
    sms = [m for m in messages(store, journey="promo") if m.status == "sent"]
    assert [m.address for m in sms] != [ATTACKER_PHONE], "victim's consented marketing SMS sent to the attacker's number"
    assert _row(store, victim).phone == VICTIM_PHONE, "an unauthenticated track replaced the victim's phone"
