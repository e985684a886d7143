"""The six shipped journeys (journeys/*.yaml with templates/) validate and send: each one is
run over simulated weeks against a real store with the file channels, and what every contact
received — step by step, in its own language — is checked."""
from __future__ import annotations

import csv
import email
import email.policy
from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.catalog import import_products, install_catalog
from nurture.runtime import Runtime, run_tick
from nurture.runtime.stable_random import in_holdout
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import contact_t, enrollment_t
from tests.conftest import REPO, utc
from tests.engine_fixtures import add_contact, add_event, contact_row, enrollments, messages, set_consent

T0 = utc(2026, 11, 2, 9)  # a Monday
JOURNEYS = ("welcome", "browse_abandonment", "cart_abandonment", "b2b_nurture", "post_purchase", "win_back")


def test_the_six_journeys_validate():
    spec = load_project(REPO)
    assert spec.errors == []
    assert set(JOURNEYS) <= set(spec.journeys)


@pytest.fixture
def world(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    spec = load_project(REPO)
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(tmp_path / "data"), "NURTURE_FROM_EMAIL": "shop@example.com"})
    catalog = tmp_path / "products.csv"
    with open(catalog, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "name", "category", "price", "consumption_days", "rank"])
        writer.writerows([["C-1", "Espresso beans 1 kg", "coffee", "18.90", "20", "1"],
                          ["C-2", "Milk frother", "coffee", "39.00", "", "2"],
                          ["T-1", "Green tea", "tea", "9.50", "30", "1"]])
    assert import_products(store, catalog).errors == []
    install_catalog(rt.templates, store)
    yield store, rt
    rt.close()
    store.dispose()


def _contact_outside_holdout(store, journey, email, **fields):
    """A new contact that the journey's stable 10 % holdout does not take (so it is messaged)."""
    n = 0
    while True:
        cid = add_contact(store, f"{n}.{email}" if n else email, **fields)
        if not in_holdout(journey, cid, 0.10):
            return cid
        n += 1


def _run(rt, until_days: int) -> None:
    clock = T0
    while clock <= T0 + timedelta(days=until_days):
        for journey in JOURNEYS:
            run_tick(rt, journey, clock)
        # every 6 h for two days, then 09:00 and 17:00 UTC (daytime in all the contacts' zones)
        clock += timedelta(hours=6) if clock < T0 + timedelta(days=2) else \
            timedelta(hours=8) if clock.hour == 9 else timedelta(hours=16)


def _sent(store, journey, cid):
    return [(m.step_id, m.subject) for m in messages(store, journey=journey, contact_id=cid) if m.status == "sent"]


def test_every_journey_sends_its_series_in_the_contacts_language(world):
    store, rt = world
    people = {}

    def person(journey, email, locale, tz, **fields):
        cid = _contact_outside_holdout(store, journey, email, locale=locale, timezone=tz, first_name="Kim", **fields)
        set_consent(store, cid, "email", at=T0 - timedelta(days=200))
        people[journey] = cid
        return cid

    cid = person("welcome", "neu@example.de", "de", "Europe/Berlin")
    add_event(store, cid, "form_submit", T0, {"form": "newsletter"})
    # a new visitor (someone known for 180 days without opening, clicking or buying is sunset)
    cid = person("browse_abandonment", "looker@example.com", "en", "America/New_York", at=T0 - timedelta(days=3))
    add_event(store, cid, "view_product", T0, {"sku": "C-2", "product_name": "Milk frother", "category": "coffee",
                                               "price": 39.0})
    cid = person("cart_abandonment", "korb@example.de", "de", "Europe/Berlin", phone="+4915112345678")
    set_consent(store, cid, "sms", at=T0 - timedelta(days=200))
    add_event(store, cid, "add_to_cart", T0, {"cart_value": 150.0, "item_count": 2})
    cid = person("b2b_nurture", "cfo@firm.example", "en", "Europe/London", score=70.0,
                 attributes={"company": "Firm Ltd", "industry": "manufacturing"})
    add_event(store, cid, "form_submit", T0, {"form": "whitepaper", "pain_point": "cost"})
    cid = person("post_purchase", "buyer@example.com", "en", "Europe/Dublin")
    add_event(store, cid, "purchase", T0, {"order_id": "A-1", "value": 18.9, "sku": "C-1", "category": "coffee",
                                           "consumption_days": 20})
    cid = person("win_back", "gone@example.com", "en", "America/Chicago")
    add_event(store, cid, "purchase", T0 - timedelta(days=120), {"order_id": "OLD", "value": 40.0})

    _run(rt, until_days=40)

    welcome = _sent(store, "welcome", people["welcome"])
    assert [s for s, _ in welcome] == ["welcome_value", "welcome_social_proof", "welcome_preferences",
                                       "welcome_first_order"]
    assert welcome[0][1] == "Willkommen, Kim!"
    browse = _sent(store, "browse_abandonment", people["browse_abandonment"])  # one reminder, in its A/B arm
    assert browse in ([("browse_reminder", "Still interested in Milk frother?")],
                      [("browse_reminder_scarcity", "Only a few left: Milk frother")])
    cart = _sent(store, "cart_abandonment", people["cart_abandonment"])
    assert [s for s, _ in cart] == ["reminder", "incentive", "sms_nudge", "last_call"]
    assert cart[1][1] == "10 % auf Ihren Warenkorb"
    assert [s for s, _ in _sent(store, "b2b_nurture", people["b2b_nurture"])] == ["guide", "roi_calculator",
                                                                                   "demo_invite"]
    handovers = (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()
    assert len(handovers) == 1 and "cfo@firm.example" in handovers[0]
    assert contact_row(store, people["b2b_nurture"]).lifecycle_stage == "mql"
    assert [s for s, _ in _sent(store, "post_purchase", people["post_purchase"])] == [
        "thank_you", "cross_sell", "review_request", "reorder_reminder"]
    assert [s for s, _ in _sent(store, "win_back", people["win_back"])] == ["we_miss_you", "comeback_offer",
                                                                             "last_chance"]
    assert contact_row(store, people["win_back"]).attributes.get("sunset") is True  # never re-engaged

    outbox = rt.data_dir / "outbox" / "email"
    cross_sell = [m for m in messages(store, journey="post_purchase", step_id="cross_sell")][0]
    html = _html_body(outbox / "post_purchase" / f"{cross_sell.id:09d}.eml")
    assert "Milk frother" in html and "Espresso beans" not in html  # same category, the bought sku left out
    german = [m for m in messages(store, journey="cart_abandonment", step_id="reminder")][0]
    html = _html_body(outbox / "cart_abandonment" / f"{german.id:09d}.eml")
    assert "Zurück zum Warenkorb" in html and "Abmelden" in html and "/u/" in html  # unsubscribe link kept


def _html_body(path) -> str:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return message.get_body(("html",)).get_content()


def test_small_cart_gets_no_incentive_and_no_sms_without_sms_consent_and_purchase_ends_it(world):
    store, rt = world
    small = _contact_outside_holdout(store, "cart_abandonment", "small@example.com", locale="en",
                                     timezone="Europe/London", phone="+447700900123")
    set_consent(store, small, "email", at=T0 - timedelta(days=10))  # e-mail only: no SMS consent
    add_event(store, small, "add_to_cart", T0, {"cart_value": 60.0})
    buyer = _contact_outside_holdout(store, "cart_abandonment", "quick@example.com", locale="en", timezone="Europe/London")
    set_consent(store, buyer, "email", at=T0 - timedelta(days=10))
    add_event(store, buyer, "add_to_cart", T0, {"cart_value": 300.0})
    add_event(store, buyer, "purchase", T0 + timedelta(hours=28), {"value": 300.0})  # before the incentive
    _run(rt, until_days=4)
    assert [s for s, _ in _sent(store, "cart_abandonment", small)] == ["reminder", "last_call"]
    assert [s for s, _ in _sent(store, "cart_abandonment", buyer)] == ["reminder"]
    with store.engine.connect() as conn:
        e = enrollment_t
        status, revenue = conn.execute(select(e.c.status, e.c.revenue).where(e.c.contact_id == buyer,
                                                                             e.c.journey == "cart_abandonment")).one()
    assert (status, revenue) == ("converted", 300.0)


def test_win_back_leaves_recently_active_customers_alone(world):
    store, rt = world
    recent = _contact_outside_holdout(store, "win_back", "recent@example.com")
    set_consent(store, recent, "email", at=T0 - timedelta(days=200))
    add_event(store, recent, "purchase", T0 - timedelta(days=120))
    add_event(store, recent, "email_click", T0 - timedelta(days=20))  # clicked recently: not inactive
    never_bought = _contact_outside_holdout(store, "win_back", "prospect@example.com")
    set_consent(store, never_bought, "email", at=T0 - timedelta(days=200))
    run_tick(rt, "win_back", T0)
    assert messages(store, journey="win_back") == []


# ---------------------------------------------------------------- condition triggers (segment / when)

WHEN_JOURNEY = """
name: lapsed
trigger:
  when: {attribute: {plan: free}}
reentry: {reentry}
steps:
  - {id: hello, send: {channel: email, template: hello, subject: Hi}}
  - {id: pause, wait: 2d}
"""
SEGMENTS = """
segments:
  - name: free_plan
    when: {attribute: {plan: free}}
"""


@pytest.mark.parametrize("reentry, entry_days", [("never", [0]), ("4d", [0, 4]), ("always", [0, 3, 6])])
def test_a_when_trigger_enrolls_matching_contacts_once_at_a_time_by_the_reentry_rule(make_runtime, store,
                                                                                     reentry, entry_days):
    rt = make_runtime({"lapsed": WHEN_JOURNEY.replace("{reentry}", reentry)})
    free = add_contact(store, "free@example.com", attributes={"plan": "free"})
    set_consent(store, free, "email", at=T0 - timedelta(days=1))
    add_contact(store, "paid@example.com", attributes={"plan": "paid"})
    for day in range(7):  # a daily tick; a run through the journey ends on the tick two days later
        run_tick(rt, "lapsed", T0 + timedelta(days=day))
    rows = [(e.contact_id, e.entered_at) for e in enrollments(store)]
    assert rows == [(free, T0 + timedelta(days=d)) for d in entry_days]


def test_a_when_trigger_enrolls_only_who_still_matches_when_it_writes(make_runtime, store, monkeypatch):
    """The condition is read over every contact outside the write transaction; the write checks
    those contacts again. One who stopped matching in between does not enter."""
    from contextlib import contextmanager

    from nurture.runtime.enroll import enroll
    rt = make_runtime({"lapsed": WHEN_JOURNEY.replace("{reentry}", "never")})
    stays = add_contact(store, "stays@example.com", attributes={"plan": "free"})
    upgrades = add_contact(store, "upgrades@example.com", attributes={"plan": "free"})
    real_reading = rt.store.reading

    @contextmanager
    def reading_then_upgrade():
        with real_reading() as conn:
            yield conn
        with rt.store.engine.begin() as conn:  # after the read, before the write: another request
            conn.execute(contact_t.update().where(contact_t.c.id == upgrades).values(attributes={"plan": "paid"}))
    monkeypatch.setattr(rt.store, "reading", reading_then_upgrade)
    assert enroll(rt, rt.plan("lapsed"), T0) == 1
    assert [e.contact_id for e in enrollments(store)] == [stays]


def test_a_segment_trigger_uses_the_segment_condition(make_runtime, store):
    rt = make_runtime({"lapsed": WHEN_JOURNEY.replace("when: {attribute: {plan: free}}", "segment: free_plan")
                      .replace("{reentry}", "never")}, segments=SEGMENTS)
    free = add_contact(store, "free@example.com", attributes={"plan": "free"})
    add_contact(store, "paid@example.com", attributes={"plan": "paid"})
    run_tick(rt, "lapsed", T0)
    assert [m.contact_id for m in messages(store)] == [free]


def test_a_trigger_needs_exactly_one_kind(make_project):
    bad = WHEN_JOURNEY.replace("when: {attribute: {plan: free}}", "event: signup\n  segment: nope").replace(
        "{reentry}", "never")
    spec = load_project(make_project({"lapsed": bad}))
    assert [str(e) for e in spec.errors] == [
        "journeys/lapsed.yaml:3:3: a trigger has exactly one of: event, segment, when, date (found event, segment)"]
