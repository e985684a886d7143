"""Specification: the runtime without Prefect — `run_tick(rt, journey, now)` enrolls from trigger
events, exits, converts, and moves contacts through every step kind — on SQLite and PostgreSQL.

Policies are the test defaults (UTC, e-mail quiet 21:00–08:00); ticks run at 10:00 UTC so
quiet hours stay out of the way unless a test is about them."""
from __future__ import annotations

import email
import email.policy
from collections import Counter
from datetime import timedelta, timezone

import pytest

from nurture.runtime import run_tick
from nurture.runtime.stable_random import in_holdout, pick_arm
from tests.conftest import utc
from tests.engine_fixtures import (add_contact, add_event, at_once, contact_row, enrollments, journey_yaml, messages,
                                   outcomes, reads_meet, set_consent, subscriber)
from nurture.store.tables import pending_t

T0 = utc(2026, 3, 4, 10, 0)  # a Wednesday
HELLO = "- id: hello\n  send: {channel: email, template: hello, subject: Hello}"


def tick(rt, at, journey="j"):
    return run_tick(rt, journey, at)


def pending_triggers(store) -> int:
    with store.engine.connect() as conn:
        return len(conn.execute(pending_t.select()).all())


# ---------------------------------------------------------------- trigger


def test_event_trigger_enrolls_only_events_matching_where(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO, trigger="{event: add_to_cart, where: {property: {cart_value: {gte: 20}}}}")})
    small, big = subscriber(store, "small@example.com"), subscriber(store, "big@example.com")
    add_event(store, small, "add_to_cart", T0, {"cart_value": 10})
    add_event(store, big, "add_to_cart", T0, {"cart_value": 50})
    add_event(store, small, "page_view", T0, {"cart_value": 99})  # another event name
    tick(rt, T0 + timedelta(minutes=1))
    assert [e.contact_id for e in enrollments(store)] == [big]
    assert [m.contact_id for m in messages(store, status="sent")] == [big]


def test_trigger_where_may_combine_event_properties_and_contact_attributes(make_runtime, store):
    trigger = "{event: signup, where: {all: [{property: {source: ads}}, {attribute: {country: DE}}]}}"
    rt = make_runtime({"j": journey_yaml("j", HELLO, trigger=trigger)})
    de, us = subscriber(store, "de@example.com", country="DE"), subscriber(store, "us@example.com", country="US")
    for cid in (de, us):
        add_event(store, cid, "signup", T0, {"source": "ads"})
    tick(rt, T0 + timedelta(minutes=1))
    assert [e.contact_id for e in enrollments(store)] == [de]


def test_events_older_than_the_trigger_lookback_do_not_enroll(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO, trigger="{event: signup, lookback: 2h}")})
    old, fresh = subscriber(store, "old@example.com"), subscriber(store, "fresh@example.com")
    add_event(store, old, "signup", T0 - timedelta(hours=3))
    add_event(store, fresh, "signup", T0 - timedelta(hours=1))
    tick(rt, T0)
    assert [e.contact_id for e in enrollments(store)] == [fresh]


def test_an_event_from_the_future_enrolls_once_its_time_has_come(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0 + timedelta(hours=1))
    tick(rt, T0)
    assert enrollments(store) == []
    tick(rt, T0 + timedelta(hours=1, minutes=5))
    assert [(e.contact_id, e.entered_at) for e in enrollments(store)] == [(cid, T0 + timedelta(hours=1))]


def test_an_event_from_the_future_does_not_hold_back_other_contacts(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO)})
    early, now_ = subscriber(store, "early@example.com"), subscriber(store, "now@example.com")
    add_event(store, early, "signup", T0 + timedelta(days=2))  # a clock-skewed or scheduled event
    add_event(store, now_, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert [e.contact_id for e in enrollments(store)] == [now_]


def test_a_tick_reads_each_trigger_event_once(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO, extra="reentry: always")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    tick(rt, T0 + timedelta(minutes=2))
    assert len(enrollments(store)) == 1
    assert len(messages(store)) == 1


# ---------------------------------------------------------------- reentry


@pytest.mark.parametrize("reentry, second_event_after, entries", [
    ("never", timedelta(days=30), 1),
    ("always", timedelta(hours=1), 2),
    ("7d", timedelta(days=3), 1),
    ("7d", timedelta(days=8), 2),
])
def test_reentry_rule(make_runtime, store, reentry, second_event_after, entries):
    rt = make_runtime({"j": journey_yaml("j", HELLO, extra=f"reentry: {reentry}")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, cid, "signup", T0 + second_event_after)
    tick(rt, T0 + second_event_after + timedelta(minutes=1))
    assert len(enrollments(store, contact_id=cid)) == entries


def test_no_contact_is_in_the_same_journey_twice_at_once(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 3d}\n" + HELLO, extra="reentry: always")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    add_event(store, cid, "signup", T0 + timedelta(minutes=1))
    tick(rt, T0 + timedelta(minutes=2))
    add_event(store, cid, "signup", T0 + timedelta(hours=1))
    tick(rt, T0 + timedelta(hours=1, minutes=2))
    assert len(enrollments(store)) == 1


POST_PURCHASE = journey_yaml("j", """
- {id: thank_you, send: {channel: email, template: hello, subject: Thanks}}
- {id: pause, wait: 3d}
- {id: cross_sell, send: {channel: email, template: other, subject: More}}
""", trigger="{event: purchase, lookback: 2d}", extra="reentry: always\ngoal: {event: purchase, within: 60d}")


@pytest.mark.parametrize("together", [False, True], ids=["order-by-order", "both-before-a-tick"])
def test_a_repeat_order_converts_the_running_enrollment_and_starts_its_own(make_runtime, store, together):
    """post_purchase: the trigger is the goal. The second order converts the first enrollment
    (in the tick's exit/convert stage, after enrollment) and must still get its own thank-you:
    it waits among the pending triggers and enters on the next tick."""
    rt = make_runtime({"j": POST_PURCHASE})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "purchase", T0, {"value": 50})
    if together:
        add_event(store, cid, "purchase", T0 + timedelta(minutes=2), {"value": 70})
        at = T0 + timedelta(minutes=5)
    else:
        tick(rt, T0 + timedelta(minutes=5))
        add_event(store, cid, "purchase", T0 + timedelta(days=1), {"value": 70})
        at = T0 + timedelta(days=1, minutes=5)
    for minutes in (0, 5, 10):
        tick(rt, at + timedelta(minutes=minutes))
    first, second = enrollments(store)
    assert [(first.status, first.revenue), (second.status, second.revenue)] == [("converted", 70.0), ("active", 0.0)]
    # Both orders before the first tick: the first enrollment converts before its first step.
    thanked = [m.enrollment_id for m in messages(store) if m.step_id == "thank_you" and m.status == "sent"]
    assert thanked == ([second.id] if together else [first.id, second.id])


def test_a_repeat_order_waits_no_longer_than_the_lookback(make_runtime, store):
    """A trigger event of a contact still in the journey (its goal not met) waits for that
    enrollment to end only within the trigger's lookback, then is dropped."""
    rt = make_runtime({"j": POST_PURCHASE.replace("goal: {event: purchase, within: 60d}",
                                                  "goal: {event: purchase, within: 60d, where: {value: {gte: 100}}}")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "purchase", T0, {"value": 50})
    tick(rt, T0 + timedelta(minutes=5))
    add_event(store, cid, "purchase", T0 + timedelta(hours=1), {"value": 60})  # no conversion: it waits
    tick(rt, T0 + timedelta(hours=1, minutes=5))
    tick(rt, T0 + timedelta(days=1))
    assert pending_triggers(store) == 1
    tick(rt, T0 + timedelta(days=3))  # past the 2d lookback: dropped
    assert pending_triggers(store) == 0
    tick(rt, T0 + timedelta(days=4))  # the first enrollment completes; the old order enrolls nothing
    assert [e.status for e in enrollments(store)] == ["completed"]


# ---------------------------------------------------------------- exit_when and goal


def test_exit_when_an_event_is_performed_after_enrollment(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 1d}\n" + HELLO, extra="exit_when:\n  - event: purchase")})
    buyer, browser = subscriber(store, "buyer@example.com"), subscriber(store, "browser@example.com")
    add_event(store, browser, "purchase", T0 - timedelta(days=5))  # before enrollment: no exit
    for cid in (buyer, browser):
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, buyer, "purchase", T0 + timedelta(hours=5))
    tick(rt, T0 + timedelta(days=1, minutes=1))
    by_contact = {e.contact_id: (e.status, e.exit_reason) for e in enrollments(store)}
    assert by_contact == {buyer: ("exited", "exit_when"), browser: ("completed", None)}
    assert [m.contact_id for m in messages(store)] == [browser]


def test_an_exit_event_tracked_late_or_dated_ahead_still_lets_the_contact_leave(make_runtime, store):
    """Exits on events are looked at, after a Runtime's first look at every active enrollment,
    only for contacts with something new (outcomes._changed_contacts): an exit
    event tracked before its contact's enrollment existed (the signup tracked late) and one
    dated after the tick's clock (it counts once the clock reaches it) must both still be seen."""
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO,
                                         extra="exit_when:\n  - {any: [{event: purchase}, {event: refund}]}")})
    late, ahead, stays = (subscriber(store, f"{n}@example.com") for n in ("late", "ahead", "stays"))
    for cid in (ahead, stays):
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))  # the first look: every active enrollment
    add_event(store, late, "purchase", T0 + timedelta(minutes=10))
    add_event(store, ahead, "refund", T0 + timedelta(minutes=45))  # dated ahead of the next ticks
    tick(rt, T0 + timedelta(minutes=20))
    add_event(store, late, "signup", T0)  # tracked late: enrolls as of T0, the purchase is after
    tick(rt, T0 + timedelta(minutes=30))
    status = lambda: {e.contact_id: e.status for e in enrollments(store)}  # noqa: E731
    assert status() == {late: "exited", ahead: "active", stays: "active"}
    tick(rt, T0 + timedelta(minutes=50))
    assert status() == {late: "exited", ahead: "exited", stays: "active"}


def test_a_revocation_lets_the_contact_leave_when_its_time_comes_however_it_was_recorded(make_runtime, store):
    """An exit on consent (`consent: {status: revoked}`) is looked at, after a Runtime's first
    look at every active enrollment, only for contacts with a new ledger row or a new
    enrollment: a revocation recorded now, one recorded ahead of the clock (it counts from its
    time), and one recorded before its contact's enrollment existed must all be seen."""
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=(
        "exit_when:\n  - consent: {channel: email, status: revoked}"))})
    now_, ahead, before, stays = (subscriber(store, f"{n}@example.com") for n in ("now", "ahead", "before", "stays"))
    for cid in (now_, ahead, stays):
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))  # the first look: every active enrollment
    set_consent(store, now_, status="revoked", at=T0 + timedelta(minutes=10))
    set_consent(store, ahead, status="revoked", at=T0 + timedelta(minutes=45))
    set_consent(store, before, status="revoked", at=T0 + timedelta(minutes=12))
    tick(rt, T0 + timedelta(minutes=20))
    add_event(store, before, "signup", T0)  # tracked late: enrolls as of T0, revoked since
    tick(rt, T0 + timedelta(minutes=30))
    status = lambda: {e.contact_id: e.status for e in enrollments(store)}  # noqa: E731
    assert status() == {now_: "exited", ahead: "active", before: "exited", stays: "active"}
    tick(rt, T0 + timedelta(minutes=50))
    assert status() == {now_: "exited", ahead: "exited", before: "exited", stays: "active"}


def test_only_exit_conditions_on_events_and_consent_are_looked_at_incrementally():
    from nurture.runtime.outcomes import watched_by
    from nurture.spec.models import Condition
    c = lambda raw: [Condition.model_validate(x) for x in raw]  # noqa: E731
    assert watched_by(c([{"event": "purchase"}, {"any": [{"event": "refund", "where": {"full": True}},
                                                          {"not": {"event": "open", "count": {"gte": 2}}}]},
                         {"property": {"source": "ads"}}])) == ({"purchase", "refund", "open"}, False)
    assert watched_by(c([{"consent": {"channel": "email", "status": "revoked"}}])) == (set(), True)
    for clocked in ({"event": "purchase", "within": "1d"}, {"attribute": {"plan": "pro"}}, {"score": {"gte": 5}},
                    {"segment": "buyers"}, {"all": [{"event": "purchase"}, {"not": {"attribute": {"vip": True}}}]}):
        assert watched_by(c([{"event": "purchase"}, clocked])) is None, clocked
    assert watched_by([]) is None


def test_exit_when_an_attribute_condition_holds(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 1d}\n" + HELLO,
                                         extra="exit_when:\n  - attribute: {lifecycle_stage: customer}")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    with store.engine.begin() as conn:
        from nurture.store.tables import contact_t
        conn.execute(contact_t.update().values(lifecycle_stage="customer"))
    tick(rt, T0 + timedelta(days=1, minutes=1))
    assert [(e.status, e.exit_reason) for e in enrollments(store)] == [("exited", "exit_when")]
    assert messages(store) == []


GOAL = "goal: {event: purchase, within: 72h}"


def test_goal_records_conversion_and_revenue_within_the_window(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    bought = T0 + timedelta(days=2)
    add_event(store, cid, "purchase", bought, {"value": 49.5})
    add_event(store, cid, "purchase", bought + timedelta(hours=1), {"value": 1000})  # only the first counts
    tick(rt, bought + timedelta(hours=2))
    (e,) = enrollments(store)
    assert (e.status, e.converted_at, e.revenue, e.step_id, e.exit_reason) == ("converted", bought, 49.5, None, "goal")
    tick(rt, T0 + timedelta(days=6))
    assert messages(store) == []  # a converted contact gets no more messages


@pytest.mark.parametrize("value, revenue", [("NaN", 0.0), ("Infinity", 0.0), ("1e400", 0.0), (-5, 0.0),
                                            ("19.99", 19.99), (1e308, 0.0), ([1], 0.0), (None, 0.0)])
def test_a_goal_value_is_a_finite_amount_or_no_revenue_and_never_stops_the_tick(make_runtime, store, value, revenue):
    """A purchase's `value` is whatever a browser sent. As text, "NaN" became a float NaN that
    SQLite stores as NULL (the tick failed on `enrollment.revenue NOT NULL`, on every tick) and
    "Infinity" an infinite revenue in the report: the value counts as conversions.value_of reads
    it, a number from 0 to 1e12 (or text that reads as one), else no revenue."""
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, cid, "purchase", T0 + timedelta(hours=1), {"value": value})
    tick(rt, T0 + timedelta(hours=2))
    (e,) = enrollments(store)
    assert (e.status, e.revenue) == ("converted", revenue)


def test_two_workers_recording_exits_and_conversions_at_once_count_each_once(make_runtime, store, monkeypatch):
    """Two runs of one tick (two workers, docs/scale.md) both read who exits and who converted
    before either writes. Each enrollment leaves once, and the two tick reports together count
    each exit and each conversion once: the second worker finds them done."""
    from nurture.runtime.outcomes import apply_exits, record_conversions
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO,
                                         extra=GOAL + "\nexit_when:\n  - event: unsubscribe_click")})
    buyers = [subscriber(store, f"buyer{i}@example.com") for i in range(3)]
    leavers = [subscriber(store, f"leaver{i}@example.com") for i in range(2)]
    for cid in buyers + leavers:
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    for cid in buyers:
        add_event(store, cid, "purchase", T0 + timedelta(hours=1), {"value": 10})
    for cid in leavers:
        add_event(store, cid, "unsubscribe_click", T0 + timedelta(hours=1))
    now = T0 + timedelta(hours=2)
    reads_meet(monkeypatch, rt.store)  # each worker has read: then both write
    for stage, expected in ((record_conversions, len(buyers)), (apply_exits, len(leavers))):
        counts = at_once(lambda: stage(rt, rt.plan("j"), now))
        assert sorted(counts) == [0, expected], stage.__name__
    by_contact = {e.contact_id: (e.status, e.exit_reason) for e in enrollments(store)}
    assert by_contact == {**{b: ("converted", "goal") for b in buyers}, **{x: ("exited", "exit_when") for x in leavers}}


def test_a_purchase_after_the_goal_window_is_not_a_conversion(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    for hours in (24, 48, 71):
        tick(rt, T0 + timedelta(hours=hours))
    add_event(store, cid, "purchase", T0 + timedelta(hours=73), {"value": 80})
    tick(rt, T0 + timedelta(hours=74))
    (e,) = enrollments(store)
    assert (e.status, e.converted_at, e.revenue) == ("active", None, 0.0)


def test_a_purchase_at_the_last_instant_of_the_window_converts(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    edge, late = subscriber(store, "edge@example.com"), subscriber(store, "late@example.com")
    for cid in (edge, late):
        add_event(store, cid, "signup", T0 + timedelta(microseconds=250))
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, edge, "purchase", T0 + timedelta(hours=72, microseconds=250), {"value": 1})  # within: ≤
    add_event(store, late, "purchase", T0 + timedelta(hours=72, microseconds=251), {"value": 1})
    tick(rt, T0 + timedelta(hours=80))
    assert {e.contact_id: e.status for e in enrollments(store)} == {edge: "converted", late: "active"}


def test_the_trigger_event_itself_is_not_the_conversion(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, trigger="{event: purchase}",
                                         extra="goal: {event: purchase, within: 30d}")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "purchase", T0, {"value": 10})
    tick(rt, T0 + timedelta(minutes=1))
    assert [e.status for e in enrollments(store)] == ["active"]


def test_a_conversion_inside_the_window_counts_even_when_seen_by_a_later_tick(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 10d}\n" + HELLO, extra=GOAL)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, cid, "purchase", T0 + timedelta(days=1), {"value": 20})
    tick(rt, T0 + timedelta(days=4))
    assert [(e.status, e.revenue) for e in enrollments(store)] == [("converted", 20.0)]


def test_a_purchase_tracked_after_its_window_closed_converts(make_runtime, store):
    # SQLite: a look covers what is new since the last one (outcomes._since_last_look), so the
    # late purchase is recorded at the next tick. PostgreSQL: closed windows are looked at once
    # an hour of the clock (outcomes.LATE_EVERY), open ones at every tick.
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 10d}\n" + HELLO, extra=GOAL)})
    late, prompt = subscriber(store, "late@example.com"), subscriber(store, "prompt@example.com")
    add_event(store, late, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    add_event(store, prompt, "signup", T0 + timedelta(days=4))
    tick(rt, T0 + timedelta(days=4, minutes=1))  # looks at every window, Ann's closed one included
    add_event(store, late, "purchase", T0 + timedelta(days=2), {"value": 20})  # tracked late
    add_event(store, prompt, "purchase", T0 + timedelta(days=4, minutes=30), {"value": 5})
    tick(rt, T0 + timedelta(days=4, minutes=40))
    status = lambda: {e.contact_id: (e.status, e.revenue) for e in enrollments(store)}  # noqa: E731
    if store.dialect == "sqlite":
        assert status() == {late: ("converted", 20.0), prompt: ("converted", 5.0)}
        return
    assert status() == {late: ("active", 0.0), prompt: ("converted", 5.0)}
    tick(rt, T0 + timedelta(days=4, minutes=61))
    assert status() == {late: ("converted", 20.0), prompt: ("converted", 5.0)}


def test_a_goal_event_tracked_before_its_enrollment_existed_converts(make_runtime, store):
    """A tick looks at the goal events (the purchase) before the contact is enrolled: its
    signup is tracked later but dated earlier. The enrollment it makes then still converts on
    that purchase, though the purchase is no longer new to the Runtime (its next look looks only
    at what changed: outcomes._changed_contacts)."""
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "purchase", T0 + timedelta(minutes=30), {"value": 12})
    tick(rt, T0 + timedelta(hours=1))  # the first look: every window
    assert enrollments(store) == []
    add_event(store, cid, "signup", T0)  # tracked late
    tick(rt, T0 + timedelta(hours=1, minutes=30))
    assert [(e.status, e.revenue, e.exit_reason) for e in enrollments(store)] == [("converted", 12.0, "goal")]


def test_a_goal_event_moved_by_a_merge_converts_the_contact_it_moved_to(make_runtime, store):
    """An anonymous visitor's purchase moves to the known contact when the visitor identifies
    (nurture.identities.merge_contacts): its id is old, yet the known contact's enrollment,
    looked at only for what changed since the Runtime's last look, converts on it."""
    from nurture.identities import merge_contacts
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)})
    known = subscriber(store, "ann@example.com")
    visitor = add_contact(store, None)  # an anonymous visitor
    add_event(store, known, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))  # the first look: every window
    add_event(store, visitor, "purchase", T0 + timedelta(minutes=5), {"value": 30})
    tick(rt, T0 + timedelta(minutes=10))  # the purchase is new, but its contact is in no journey
    assert [e.status for e in enrollments(store)] == ["active"]
    with store.engine.begin() as conn:
        merge_contacts(conn, visitor, known, reason="identify", now=T0 + timedelta(minutes=15))
    tick(rt, T0 + timedelta(minutes=20))
    assert [(e.status, e.revenue) for e in enrollments(store)] == [("converted", 30.0)]


def test_a_goal_event_dated_after_the_tick_converts_once_the_clock_reaches_it(make_runtime, store):
    """A purchase tracked with a time after the tick's clock (a scheduled import, clock skew)
    does not count yet; it converts at the first tick at or after its time, though by then it
    is no longer new to the Runtime. A new Runtime (another process) sees the same, also of a
    purchase that was already there, dated ahead, when it first looked."""
    spec = {"j": journey_yaml("j", "- {id: pause, wait: 5d}\n" + HELLO, extra=GOAL)}
    rt = make_runtime(spec)
    early, later, known = (subscriber(store, f"{n}@example.com") for n in ("early", "later", "known"))
    for cid in (early, later, known):
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))  # the first look: every window
    add_event(store, early, "purchase", T0 + timedelta(minutes=30), {"value": 7})
    add_event(store, later, "purchase", T0 + timedelta(minutes=50), {"value": 9})
    tick(rt, T0 + timedelta(minutes=20))
    status = lambda: {e.contact_id: e.status for e in enrollments(store)}  # noqa: E731
    assert status() == {early: "active", later: "active", known: "active"}
    tick(rt, T0 + timedelta(minutes=35))
    assert status() == {early: "converted", later: "active", known: "active"}
    tick(make_runtime(spec), T0 + timedelta(minutes=40))
    assert status() == {early: "converted", later: "active", known: "active"}
    tick(rt, T0 + timedelta(minutes=55))
    assert status() == {early: "converted", later: "converted", known: "active"}

    add_event(store, known, "purchase", T0 + timedelta(hours=2, minutes=10), {"value": 3})
    other = make_runtime(spec)
    tick(other, T0 + timedelta(hours=2))  # its first look: the purchase is ahead of the clock
    assert status()[known] == "active"
    tick(other, T0 + timedelta(hours=2, minutes=20))
    assert status()[known] == "converted"


# ---------------------------------------------------------------- holdout


def test_holdout_is_stable_per_contact_and_journey_and_never_messaged(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO, extra="holdout: 30%\n" + GOAL)})
    ids = [subscriber(store, f"c{i}@example.com") for i in range(40)]
    for cid in ids:
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    held = {e.contact_id for e in enrollments(store) if e.holdout}
    assert held == {cid for cid in ids if in_holdout("j", cid, 0.3)}
    assert 0 < len(held) < len(ids)
    assert {cid for cid in ids if in_holdout("other_journey", cid, 0.3)} != held  # per journey
    by_status = {(m.contact_id in held, m.status, m.reason) for m in messages(store)}
    assert by_status == {(True, "holdout", "holdout"), (False, "sent", None)}
    outbox = rt.data_dir / "outbox" / "email" / "j"
    assert len(list(outbox.glob("*.eml"))) == len(ids) - len(held)
    # holdout contacts still convert, so lift can be measured
    some_held = sorted(held)[0]
    add_event(store, some_held, "purchase", T0 + timedelta(hours=2), {"value": 5})
    tick(rt, T0 + timedelta(hours=3))
    assert [e.status for e in enrollments(store, contact_id=some_held)] == ["converted"]


# ---------------------------------------------------------------- step kinds


def test_wait_counts_from_the_event_not_from_the_tick(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: wait_1h, wait: 1h}\n" + HELLO)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0 + timedelta(minutes=2))
    tick(rt, T0 + timedelta(minutes=30))
    assert messages(store) == []
    (e,) = enrollments(store)
    assert (e.step_id, e.next_due_at) == ("wait_1h", T0 + timedelta(hours=1, minutes=2))
    tick(rt, T0 + timedelta(hours=1, minutes=1))
    assert messages(store) == []
    tick(rt, T0 + timedelta(hours=1, minutes=3))
    assert outcomes(store) == [("hello", "sent", None)]


WAIT_UNTIL = '- id: monday\n  wait_until: {time: "09:00", weekdays: [mon]}\n' + HELLO


@pytest.mark.parametrize("tz, expected_due", [
    # Wednesday → Monday 9:00 local; New York has switched to EDT (UTC-4) on Sunday 8 March 2026
    ("America/New_York", utc(2026, 3, 9, 13, 0)),
    ("Asia/Kathmandu", utc(2026, 3, 9, 3, 15)),  # UTC+05:45
    ("Europe/Berlin", utc(2026, 3, 9, 8, 0)),  # CET, UTC+1
    (None, utc(2026, 3, 9, 9, 0)),  # no zone: the policy time zone (UTC)
])
def test_wait_until_is_a_local_time_of_day_on_allowed_weekdays(make_runtime, store, tz, expected_due):
    rt = make_runtime({"j": journey_yaml("j", WAIT_UNTIL)})
    cid = subscriber(store, "ann@example.com", timezone=tz)
    add_event(store, cid, "signup", T0 + timedelta(hours=5))
    tick(rt, T0 + timedelta(hours=5, minutes=1))
    (e,) = enrollments(store)
    assert (e.step_id, e.next_due_at) == ("monday", expected_due)
    tick(rt, expected_due - timedelta(minutes=1))
    assert messages(store) == []
    tick(rt, expected_due + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "sent", None)]


def test_wait_until_today_when_the_time_is_still_ahead(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", '- id: evening\n  wait_until: "18:30"\n' + HELLO)})
    cid = subscriber(store, "ann@example.com", timezone="Asia/Kolkata")  # UTC+05:30
    add_event(store, cid, "signup", utc(2026, 3, 4, 3, 0))  # 08:30 in Kolkata
    tick(rt, utc(2026, 3, 4, 3, 1))
    assert [e.next_due_at for e in enrollments(store)] == [utc(2026, 3, 4, 13, 0)]


BRANCH = """
- id: check
  branch:
    when: {attribute: {plan: pro}}
    then: [{id: pro_mail, send: {channel: email, template: hello, subject: Pro}}]
    else: [{id: basic_mail, send: {channel: email, template: other, subject: Basic}}]
- id: after
  update: {attributes: {seen_branch: true}}
"""


def test_branch_sends_each_contact_down_its_path_and_both_paths_rejoin(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", BRANCH)})
    pro = subscriber(store, "pro@example.com", attributes={"plan": "pro"})
    basic = subscriber(store, "basic@example.com", attributes={"plan": "basic"})
    none = subscriber(store, "none@example.com")
    for cid in (pro, basic, none):
        add_event(store, cid, "signup", T0)
    report = tick(rt, T0 + timedelta(minutes=1))
    assert {(m.contact_id, m.step_id) for m in messages(store)} == {(pro, "pro_mail"), (basic, "basic_mail"),
                                                                   (none, "basic_mail")}
    assert report.outcomes[("check", "then", None)] == 1 and report.outcomes[("check", "else", None)] == 2
    assert all(contact_row(store, cid).attributes["seen_branch"] is True for cid in (pro, basic, none))
    assert {e.status for e in enrollments(store)} == {"completed"}


WAIT_FOR = """
- id: wait_buy
  wait_for:
    event: purchase
    within: 2d
    where: {value: {gte: 10}}
    then: [{id: thanks, send: {channel: email, template: hello, subject: Thanks}}]
    timeout: [{id: nudge, send: {channel: email, template: other, subject: "Still there?"}}]
"""


def test_wait_for_takes_the_then_path_when_the_event_arrives(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", WAIT_FOR)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "purchase", T0 - timedelta(hours=1), {"value": 50})  # before the step: ignored
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert enrollments(store)[0].step_id == "wait_buy"
    add_event(store, cid, "purchase", T0 + timedelta(hours=3), {"value": 5})  # too small for `where`
    tick(rt, T0 + timedelta(hours=4))
    assert messages(store) == []
    add_event(store, cid, "purchase", T0 + timedelta(hours=5), {"value": 15})
    tick(rt, T0 + timedelta(hours=6))
    assert outcomes(store) == [("thanks", "sent", None)]


def test_wait_for_takes_the_timeout_path_when_the_event_never_comes(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", WAIT_FOR)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    tick(rt, T0 + timedelta(days=1, hours=23))
    assert messages(store) == []
    tick(rt, T0 + timedelta(days=2, minutes=1))
    assert outcomes(store) == [("nudge", "sent", None)]


@pytest.mark.parametrize("late", [timedelta(minutes=2), timedelta(hours=20)], ids=["next-tick", "after-a-pause"])
def test_wait_for_an_event_after_the_window_closed_takes_the_timeout_path(make_runtime, store, late):
    """The window is `within` from arrival: an event after it is no answer in time, even when
    the first tick after the window's end sees both (the next 5-minute tick, a paused schedule)."""
    rt = make_runtime({"j": journey_yaml("j", WAIT_FOR)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    bob = subscriber(store, "bob@example.com")
    add_event(store, bob, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))  # both wait at wait_buy; the window closes 2 days later
    [closes] = {e.next_due_at.replace(tzinfo=timezone.utc) for e in enrollments(store)}
    assert closes == T0 + timedelta(days=2)  # waits count from the enrollment's own time
    add_event(store, cid, "purchase", closes, {"value": 15})  # on the last instant: in time
    add_event(store, bob, "purchase", closes + timedelta(minutes=1) + late, {"value": 15})
    tick(rt, closes + timedelta(minutes=1) + late + timedelta(minutes=2))
    assert sorted((m.contact_id, m.step_id) for m in messages(store)) == [(cid, "thanks"), (bob, "nudge")]


SPLIT = """
- id: ab
  split:
    - {name: a, weight: 75, steps: [{id: mail_a, send: {channel: email, template: hello, subject: A}}]}
    - {name: b, weight: 25, steps: [{id: mail_b, send: {channel: email, template: other, subject: B}}]}
"""


def test_split_follows_the_weights_and_is_stable_per_contact(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", SPLIT)})
    ids = [subscriber(store, f"c{i}@example.com") for i in range(120)]
    for cid in ids:
        add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    arm_of = {m.contact_id: m.step_id for m in messages(store)}
    arms = rt.plan("j").nodes["ab"].arms
    assert arm_of == {cid: "mail_" + pick_arm("j", "ab", cid, arms)[0] for cid in ids}
    share_a = sum(1 for s in arm_of.values() if s == "mail_a") / len(ids)
    assert 0.6 < share_a < 0.9  # weight 3:1


def test_each_split_step_draws_its_own_arm_and_none_follows_the_holdout():
    """Two 50/50 splits of one journey cross into all four combinations (an arm drawn per
    contact only would send every "a" of the first split to "a" of the second), and the arms
    split the treated members as weighted (a draw shared with the holdout would leave its
    lowest slice of arm "a" to the holdout)."""
    arms = (("a", 50.0, None), ("b", 50.0, None))
    ids = range(1, 2001)
    pairs = Counter((pick_arm("j", "first", cid, arms)[0], pick_arm("j", "second", cid, arms)[0]) for cid in ids)
    assert set(pairs) == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}
    assert all(400 < n < 600 for n in pairs.values()), pairs
    treated = [cid for cid in ids if not in_holdout("j", cid, 0.3)]
    share_a = sum(pick_arm("j", "first", cid, arms)[0] == "a" for cid in treated) / len(treated)
    assert 0.45 < share_a < 0.55


def test_a_holdout_share_holds_out_that_share_of_contacts():
    for share in (0.1, 0.3):
        held = sum(in_holdout("j", cid, share) for cid in range(1, 5001)) / 5000
        assert share - 0.02 < held < share + 0.02, (share, held)
    assert not any(in_holdout("j", cid, 0.0) for cid in range(1, 1001))


def test_update_sets_attributes_and_lifecycle_stage(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- id: mark\n  update: {attributes: {welcomed: true, tier: 2}, lifecycle_stage: mql}")})
    cid = subscriber(store, "ann@example.com", attributes={"plan": "pro"})
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    row = contact_row(store, cid)
    assert (row.lifecycle_stage, row.attributes) == ("mql", {"plan": "pro", "welcomed": True, "tier": 2})


def test_update_to_null_clears_the_attribute_and_keeps_the_key_on_both_databases(make_runtime, store):
    # SQLite's json_patch (a merge patch) used to delete a key set to null; PostgreSQL stored the null
    steps = "- id: clear\n  update: {attributes: {coupon: null, 'say \"hi\"': null, never_set: null, seen: true}}"
    rt = make_runtime({"j": journey_yaml("j", steps)})
    cid = subscriber(store, "ann@example.com", attributes={"coupon": "SAVE10", "plan": "pro", 'say "hi"': 1})
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert contact_row(store, cid).attributes == {"coupon": None, "plan": "pro", 'say "hi"': None,
                                                  "never_set": None, "seen": True}


def test_a_send_after_clearing_an_attribute_renders_it_as_empty(make_runtime, store):
    steps = ("- id: clear\n  update: {attributes: {coupon: null}}\n"
             "- id: mail\n  send: {channel: email, template: coupon, subject: Hi}")
    rt = make_runtime({"j": journey_yaml("j", steps)},
                      templates={"email/coupon.html": "<p>{% if contact.coupon %}Code {{ contact.coupon }}"
                                                      "{% else %}No code{{ contact.coupon }}{% endif %}</p>"})
    cid = subscriber(store, "ann@example.com", attributes={"coupon": "SAVE10"})
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert outcomes(store) == [("mail", "sent", None)]  # SQLite used to fail it: no attribute 'coupon'
    [eml] = (rt.data_dir / "outbox" / "email" / "j").glob("*.eml")
    html = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default).get_body(("html",)).get_content()
    assert "<p>No code</p>" in html


def test_exit_step_leaves_the_journey_with_its_reason(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- id: stop\n  exit: not_a_fit\n" + HELLO)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert [(e.status, e.exit_reason, e.step_id) for e in enrollments(store)] == [("exited", "not_a_fit", None)]
    assert messages(store) == []


def test_one_tick_carries_a_contact_through_every_instant_step(make_runtime, store):
    steps = "- {id: tag, update: {lifecycle_stage: engaged}}\n" + HELLO + "\n- {id: tag2, update: {attributes: {done: true}}}"
    rt = make_runtime({"j": journey_yaml("j", steps)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    tick(rt, T0 + timedelta(minutes=1))
    assert [e.status for e in enrollments(store)] == ["completed"]
    assert contact_row(store, cid).attributes == {"done": True}
    assert outcomes(store) == [("hello", "sent", None)]


def test_the_then_path_of_a_wait_for_starts_at_the_event_not_at_the_tick_that_saw_it(make_runtime, store):
    """Logical time (nurture.steps.transitions): a `wait: 1h` after a click at 10:10 ends at
    11:10 whichever tick notices the click — here an hourly one, 45 minutes later."""
    steps = """
    - id: wf
      wait_for:
        event: email_click
        within: 2d
        then: [{id: after_click, wait: 1h}]
        timeout: [{id: after_timeout, wait: 1h}]
    """
    rt = make_runtime({"j": journey_yaml("j", steps)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    add_event(store, cid, "email_click", T0 + timedelta(minutes=10))
    add_event(store, cid, "email_click", T0 + timedelta(minutes=40))  # a second click: the first counts
    run_tick(rt, "j", T0 + timedelta(minutes=55))
    [e] = enrollments(store, journey="j")
    assert (e.step_id, e.next_due_at) == ("after_click", T0 + timedelta(minutes=70))


def test_the_event_that_ends_a_wait_for_does_not_end_the_next_wait_for_of_that_event(make_runtime, store):
    """wait_for a purchase, then wait_for a second one: the then path arrives at the first
    purchase's time (logical time), and "since arriving" is after that instant — one purchase
    must not pass both waits and send the contact down the repeat-buyer path."""
    steps = """
    - id: first_buy
      wait_for:
        event: purchase
        within: 2d
        then:
          - id: second_buy
            wait_for:
              event: purchase
              within: 2d
              then: [{id: repeat, wait: 1h}]
              timeout: [{id: one_time, wait: 1h}]
        timeout: [{id: never, wait: 1h}]
    """
    rt = make_runtime({"j": journey_yaml("j", steps)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    add_event(store, cid, "purchase", T0 + timedelta(minutes=10))
    run_tick(rt, "j", T0 + timedelta(minutes=20))
    run_tick(rt, "j", T0 + timedelta(minutes=25))
    [e] = enrollments(store, journey="j")
    assert e.step_id == "second_buy"
    add_event(store, cid, "purchase", T0 + timedelta(minutes=30))
    run_tick(rt, "j", T0 + timedelta(minutes=35))
    [e] = enrollments(store, journey="j")
    assert (e.step_id, e.next_due_at) == ("repeat", T0 + timedelta(minutes=90))
