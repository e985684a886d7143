"""Specification: a `when` trigger with an anchor (`{event: X}`) reads, on SQLite, only the
contacts that may match (nurture.runtime.when_candidates) — and enrolls exactly whom the whole
condition over every contact would: as time lets a blocker go, as events arrive late or move
with a merge, as an attribute changes with no event at all, as the re-entry period ends. The
same ticks on PostgreSQL (the whole condition every tick) give the same enrollments."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from nurture.identities import merge_contacts
from nurture.runtime import run_tick
from nurture.runtime.when_candidates import anchored_by
from nurture.spec.models import Condition
from nurture.store.tables import contact_t, enrollment_t
from tests.conftest import utc
from tests.engine_fixtures import add_contact, add_event, journey_yaml, subscriber

T0 = utc(2026, 3, 4, 10, 0)  # a Wednesday
HELLO = "- id: hello\n  send: {channel: email, template: hello, subject: Hello}"
LAPSED = ("{when: {all: [{event: purchase}, {not: {event: purchase, within: 2h}},"
          " {not: {event: email_open, within: 2h}}, {attribute: {sunset: {ne: true}}}]}}")


def _c(raw):
    return Condition.model_validate(raw)


def test_anchors_and_blockers_are_read_from_the_conjunction():
    a = anchored_by(_c({"all": [{"event": "purchase", "where": {"value": {"gte": 10}}},
                                {"not": {"event": "purchase", "within": "90d"}},
                                {"not": {"event": "email_open", "within": "30d"}},
                                {"not": {"event": "email_open", "within": "10d"}},
                                {"not": {"event": "refund", "within": "5d", "where": {"full": True}}},
                                {"attribute": {"sunset": {"ne": True}}}]}), {})
    assert a is not None and a.anchors == {"purchase"}
    assert a.blockers == {"purchase": timedelta(days=90), "email_open": timedelta(days=10)}  # the shorter window
    assert anchored_by(_c({"any": [{"event": "purchase"}, {"attribute": {"vip": True}}]}), {}) is None
    assert anchored_by(_c({"event": "purchase", "within": "7d"}), {}) is None  # a window: no anchor
    assert anchored_by(_c({"event": "purchase", "count": {"lte": 2}}), {}) is None
    assert anchored_by(None, {}) is None
    kept = anchored_by(_c({"all": [{"event": "purchase"}, {"not": {"event": "purchase", "within": "400d"}}]}),
                       {}, events_kept=timedelta(days=365))
    assert kept is not None and kept.blockers == {}  # retention may delete what would bar: not used

    class Segment:
        when = _c({"all": [{"event": "signup"}, {"not": {"event": "email_click", "within": "14d"}}]})
    seg = anchored_by(_c({"segment": "quiet"}), {"quiet": Segment()})
    assert seg is not None and seg.anchors == {"signup"} and seg.blockers == {"email_click": timedelta(days=14)}


def test_a_lapsed_contact_enters_exactly_when_the_whole_condition_would_let_it(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", HELLO, trigger=LAPSED, extra="reentry: 3h")})

    def tick(at):
        run_tick(rt, "j", at)

    def entries():
        with store.reading() as conn:
            rows = conn.execute(select(enrollment_t.c.contact_id, enrollment_t.c.entered_at)
                                .order_by(enrollment_t.c.id)).all()
        out: dict[int, list] = {}
        for cid, at in rows:
            out.setdefault(cid, []).append(at.replace(tzinfo=None) - T0.replace(tzinfo=None))
        return out

    m = timedelta(minutes=1)
    h = timedelta(hours=1)
    by_time, late_open, sunset, later_anchor, known, ahead, ahead_late = (
        subscriber(store, f"{n}@example.com")
        for n in ("time", "late", "sunset", "anchor", "known", "ahead", "ahead_late"))
    for cid in (by_time, late_open, sunset, ahead):
        add_event(store, cid, "purchase", T0)
    add_event(store, ahead_late, "purchase", T0 + 10 * m)  # barred until 2 h 10 min
    add_event(store, ahead, "email_open", T0 + 4 * h)  # dated ahead: it bars nobody before its time
    visitor = add_contact(store, None)
    add_event(store, visitor, "purchase", T0 - h)  # an anonymous visitor's
    with store.engine.begin() as conn:
        conn.execute(contact_t.update().where(contact_t.c.id == sunset).values(attributes={"sunset": True}))
    tick(T0 + h)  # the first look: all three bought within 2 h
    assert entries() == {}
    add_event(store, late_open, "email_open", T0 + h)  # tracked late: bars until T0 + 3 h
    with store.engine.begin() as conn:  # the visitor identifies: its purchase moves, id unchanged
        merge_contacts(conn, visitor, known, reason="identify", now=T0 + h)
    tick(T0 + 2 * h + m)
    assert entries() == {by_time: [2 * h + m], known: [2 * h + m], ahead: [2 * h + m]}
    add_event(store, ahead_late, "email_open", T0 + 4 * h)  # dated ahead, tracked since the last look
    with store.engine.begin() as conn:  # no event at all: an attribute changes
        conn.execute(contact_t.update().where(contact_t.c.id == sunset).values(attributes={}))
    add_event(store, later_anchor, "purchase", T0 - 5 * h)  # its first purchase, tracked late
    tick(T0 + 2 * h + 20 * m)
    assert entries() == {by_time: [2 * h + m], known: [2 * h + m], ahead: [2 * h + m], ahead_late: [2 * h + 20 * m],
                         sunset: [2 * h + 20 * m], later_anchor: [2 * h + 20 * m]}
    tick(T0 + 3 * h + m)
    assert entries()[late_open] == [3 * h + m]
    tick(T0 + 5 * h)  # by_time and known may enter again from 5 h 1 min (reentry: 3h)
    assert entries()[by_time] == [2 * h + m]
    tick(T0 + 5 * h + 2 * m)
    assert entries()[by_time] == [2 * h + m, 5 * h + 2 * m]
    assert entries()[known] == [2 * h + m, 5 * h + 2 * m]
    assert entries()[ahead] == [2 * h + m]  # its open of 4 h now bars it
    assert entries()[sunset] == [2 * h + 20 * m]  # entered at 2 h 20 min: may again from 5 h 20 min
    if store.dialect == "sqlite":  # (PostgreSQL: the whole condition on every tick)
        plan = rt.plan("j")
        assert rt.memo[("enroll_matching", "j", plan.version)][3] is not None
