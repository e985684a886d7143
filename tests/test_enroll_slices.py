"""Specification: an event-triggered enrollment reads its backlog in slices of ENROLL_SLICE
trigger events (nurture.runtime.enroll), each its own transaction advancing the cursor — and
enrolls exactly whom one pass over the whole backlog would: the earliest qualifying event of
a contact, the re-entry rule across slices, future events parked, the lookback, and two
PostgreSQL workers never enrolling a contact twice."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

import nurture.runtime.enroll as enroll_module
from nurture.ingest import track_in
from nurture.runtime.enroll import enroll
from nurture.store.tables import cursor_t, pending_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, at_once, enrollments, journey_yaml, reads_meet, subscriber

T0 = utc(2026, 3, 4, 10, 0)
WAIT = "- id: settle\n  wait: 30d"


def _cursor(store, journey="j"):
    with store.engine.connect() as conn:
        return conn.execute(select(cursor_t.c.last_event_pk).where(cursor_t.c.journey == journey)).scalar()


def _backlog(store):
    """Contacts and trigger events that exercise every rule, interleaved with other events so
    that slices of two trigger events cut through them. Returns (contacts, expected enrollments
    as (contact, trigger event pk))."""
    ann, bob, cid, dan, eve = (subscriber(store, f"{n}@example.com") for n in ("ann", "bob", "cid", "dan", "eve"))
    expected = []
    expected.append((ann, add_event(store, ann, "signup", T0 - timedelta(minutes=50))))
    add_event(store, bob, "page_view", T0 - timedelta(minutes=40))
    expected.append((bob, add_event(store, bob, "signup", T0 - timedelta(minutes=40))))
    add_event(store, ann, "signup", T0 - timedelta(minutes=30))  # ann again, a later slice: active, barred
    add_event(store, cid, "signup", T0 - timedelta(days=3))  # older than the lookback (1d)
    future = add_event(store, dan, "signup", T0 + timedelta(hours=2))  # parked until its time
    expected.append((eve, add_event(store, eve, "signup", T0 - timedelta(minutes=10))))
    add_event(store, eve, "signup", T0 - timedelta(minutes=5))  # eve twice in one slice: the earliest
    expected.append((cid, add_event(store, cid, "signup", T0 - timedelta(minutes=1))))
    return future, expected


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("slice_size", [1, 2, 3, 50_000])
def test_a_backlog_enrolled_in_slices_enrolls_whom_one_pass_would(make_runtime, store, monkeypatch, slice_size):
    monkeypatch.setattr(enroll_module, "ENROLL_SLICE", slice_size)
    rt = make_runtime({"j": journey_yaml("j", WAIT)})
    future, expected = _backlog(store)
    assert enroll(rt, rt.plan("j"), T0) == len(expected)
    assert sorted((e.contact_id, e.trigger_event_pk) for e in enrollments(store)) == sorted(expected)
    with store.engine.connect() as conn:
        assert conn.execute(select(pending_t.c.event_pk)).scalars().all() == [future]
    assert _cursor(store) == expected[-1][1]  # up to the last trigger event: each read once
    assert enroll(rt, rt.plan("j"), T0 + timedelta(minutes=5)) == 0  # nothing new: nothing twice
    assert enroll(rt, rt.plan("j"), T0 + timedelta(hours=3)) == 1  # the parked one, once its time came


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_enrollment_that_fails_midway_keeps_its_finished_slices_and_the_next_tick_goes_on(
        make_runtime, store, monkeypatch):
    monkeypatch.setattr(enroll_module, "ENROLL_SLICE", 2)
    rt = make_runtime({"j": journey_yaml("j", WAIT)})
    contacts = [subscriber(store, f"c{i}@example.com") for i in range(5)]
    events = [add_event(store, c, "signup", T0 - timedelta(minutes=10 - i)) for i, c in enumerate(contacts)]
    real, calls = enroll_module.arrival_due, []

    def failing_in_the_second_slice(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the database went away")
        return real(*args)
    monkeypatch.setattr(enroll_module, "arrival_due", failing_in_the_second_slice)
    with pytest.raises(RuntimeError):
        enroll(rt, rt.plan("j"), T0)
    assert [e.contact_id for e in enrollments(store)] == contacts[:2]  # the first slice, committed
    assert _cursor(store) == events[1]  # …and its cursor; the failed slice left nothing
    monkeypatch.setattr(enroll_module, "arrival_due", real)
    assert enroll(rt, rt.plan("j"), T0 + timedelta(minutes=1)) == 3
    assert sorted(e.contact_id for e in enrollments(store)) == contacts


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_postgres_workers_enrolling_one_backlog_in_slices_enroll_each_contact_once(
        make_runtime, store, monkeypatch):
    monkeypatch.setattr(enroll_module, "ENROLL_SLICE", 3)
    rt = make_runtime({"j": journey_yaml("j", WAIT)})
    contacts = [subscriber(store, f"c{i}@example.com") for i in range(12)]
    for i, c in enumerate(contacts):
        add_event(store, c, "signup", T0 - timedelta(minutes=30 - i))
        add_event(store, c, "signup", T0 - timedelta(minutes=10 - i % 5))  # each contact twice
    counts = at_once(lambda: enroll(rt, rt.plan("j"), T0))
    assert sum(counts) == len(contacts)
    assert sorted(e.contact_id for e in enrollments(store)) == contacts


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_trigger_event_that_commits_after_a_newer_one_is_still_enrolled(make_runtime, store):
    """PostgreSQL hands out event ids when rows are inserted, not when they commit: a track
    that is still writing holds an id below one another request already committed. The tick
    must not move the journey's cursor past the id in flight (it would never be read): it
    waits for the write to end (nurture.store.event_order)."""
    rt = make_runtime({"j": journey_yaml("j", WAIT)})
    ann, bob = subscriber(store, "ann@example.com"), subscriber(store, "bob@example.com")
    assert enroll(rt, rt.plan("j"), T0) == 0  # the journey's cursor exists

    def signup(email: str, minutes: int) -> tuple[int, dict]:
        return (1, {"event": "signup", "email": email, "event_id": f"{email}-signup",
                    "timestamp": (T0 + timedelta(minutes=minutes)).isoformat()})
    slow = store.engine.connect()
    in_flight = slow.begin()
    track_in(slow, [signup("ann@example.com", 1)], source="slow request", now=T0)  # the lower id, not committed
    with store.engine.begin() as conn:
        track_in(conn, [signup("bob@example.com", 2)], source="fast request", now=T0)  # the higher id, committed
    entered: list[int] = []
    tick = threading.Thread(target=lambda: entered.append(enroll(rt, rt.plan("j"), T0 + timedelta(minutes=3))))
    tick.start()
    tick.join(1.0)
    waited = tick.is_alive()
    in_flight.commit()
    slow.close()
    tick.join(30)
    entered.append(enroll(rt, rt.plan("j"), T0 + timedelta(minutes=4)))
    assert sorted(e.contact_id for e in enrollments(store)) == sorted([ann, bob])
    assert waited and entered == [2, 0]  # the tick waited for the write in flight, then took both


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_two_workers_enrolling_a_when_trigger_at_once_enroll_each_contact_once(make_runtime, store, monkeypatch):
    """Two runs of one tick (two workers on one journey, docs/scale.md) both read who matches
    before either writes. The writes are serialized per journey, and the second checks its
    candidates again after the first has committed: nobody is active twice."""
    rt = make_runtime({"j": journey_yaml("j", WAIT, trigger="{when: {attribute: {plan: free}}}")})
    contacts = sorted(subscriber(store, f"c{i}@example.com", attributes={"plan": "free"}) for i in range(5))
    reads_meet(monkeypatch, rt.store)  # each has its candidates: then both write
    assert sorted(at_once(lambda: enroll(rt, rt.plan("j"), T0))) == [0, len(contacts)]
    assert sorted(e.contact_id for e in enrollments(store)) == contacts
