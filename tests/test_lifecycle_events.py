"""Lifecycle history: every forward stage move — by scoring or by an `update` step — is recorded
once as a `lifecycle_stage_changed` event {from, to, source} with the id
`lifecycle:<contact>:<to>`, in the transaction that moves the contact; a move backward or to a
stage outside lead → mql → sql → customer records nothing. The report dates MQLs by it."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from nurture.lifecycle import STAGE_CHANGED, STAGES, at_or_beyond, before, stage_rank
from nurture.runtime import run_tick
from nurture.scoring.compute import score_contacts
from nurture.scoring.spec import STAGES as SCORING_STAGES
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, event_t
from tests.conftest import utc
from tests.engine_fixtures import add_contact, add_event, contact_row, journey_yaml, subscriber

NOW = utc(2026, 11, 20, 12)
SCORING = """
mql_threshold: 50
behaviour: {events: {demo_request: 60}}
lifecycle:
  sql: {event: sales_qualified}
"""
NOOP = "name: noop\ntrigger: {event: nothing}\nsteps: [{id: done, exit: {}}]\n"


def _changes(store):
    with store.engine.connect() as conn:
        rows = conn.execute(select(event_t.c.event_id, event_t.c.contact_id, event_t.c.properties,
                                   event_t.c.occurred_at)
                            .where(event_t.c.name == STAGE_CHANGED).order_by(event_t.c.event_id)).all()
        conn.rollback()
    return [(eid, cid, props, at) for eid, cid, props, at in rows]


def test_the_stage_order_is_declared_once():
    assert STAGES == ("lead", "mql", "sql", "opportunity", "customer") and SCORING_STAGES is STAGES
    assert at_or_beyond("sql") == ("sql", "opportunity", "customer") and before("sql") == ("lead", "mql")
    assert stage_rank("customer") == 4 and stage_rank("engaged") == 0 and stage_rank(None) == 0


def test_scoring_records_each_forward_move_once_with_its_time_and_source(store, make_project):
    spec = load_project(make_project({"noop": NOOP, "scoring": SCORING})).extra["scoring"]
    hot = add_contact(store, "hot@example.com")
    add_event(store, hot, "demo_request", NOW - timedelta(hours=1))  # 60 points: MQL
    qualified = add_contact(store, "qualified@example.com")  # no points, but sales qualified it: lead → sql
    add_event(store, qualified, "sales_qualified", NOW - timedelta(hours=2))
    add_contact(store, "done@example.com", lifecycle_stage="customer")  # already further: nothing
    add_contact(store, "cold@example.com")
    result = score_contacts(store, spec, NOW)
    assert result.promoted == {"mql": 1, "sql": 1}
    assert _changes(store) == [
        (f"lifecycle:{hot}:mql", hot, {"from": "lead", "to": "mql", "source": "scoring"}, NOW),
        (f"lifecycle:{qualified}:sql", qualified, {"from": "lead", "to": "sql", "source": "scoring"}, NOW)]
    # scored again an hour later: nobody moves, nothing is recorded again
    later = score_contacts(store, spec, NOW + timedelta(hours=1))
    assert later.promoted == {"mql": 0, "sql": 0}
    assert len(_changes(store)) == 2


def test_a_stage_reached_again_keeps_its_first_record(store, make_project):
    spec = load_project(make_project({"noop": NOOP, "scoring": SCORING})).extra["scoring"]
    hot = add_contact(store, "hot@example.com")
    add_event(store, hot, "demo_request", NOW - timedelta(hours=1))
    score_contacts(store, spec, NOW)
    with store.engine.begin() as conn:  # someone set it back to lead by hand
        conn.execute(contact_t.update().where(contact_t.c.id == hot).values(lifecycle_stage="lead"))
    assert score_contacts(store, spec, NOW + timedelta(days=1)).promoted["mql"] == 1
    assert contact_row(store, hot).lifecycle_stage == "mql"
    assert [(eid, at) for eid, _, _, at in _changes(store)] == [(f"lifecycle:{hot}:mql", NOW)]


def test_an_update_step_records_forward_moves_only(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- id: mark\n  update: {lifecycle_stage: sql}")})
    lead = subscriber(store, "lead@example.com")
    mql = subscriber(store, "mql@example.com", lifecycle_stage="mql")
    customer = subscriber(store, "customer@example.com", lifecycle_stage="customer")
    for cid in (lead, mql, customer):
        add_event(store, cid, "signup", NOW)
    run_tick(rt, "j", NOW + timedelta(minutes=1))
    at = NOW + timedelta(minutes=1)
    assert _changes(store) == [
        (f"lifecycle:{lead}:sql", lead, {"from": "lead", "to": "sql", "source": "update:j:mark"}, at),
        (f"lifecycle:{mql}:sql", mql, {"from": "mql", "to": "sql", "source": "update:j:mark"}, at)]
    # the step sets the stage as told — also backward, as before — without recording that
    assert [contact_row(store, c).lifecycle_stage for c in (lead, mql, customer)] == ["sql", "sql", "sql"]


def test_an_update_to_a_stage_of_its_own_records_nothing(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- id: tag\n  update: {lifecycle_stage: engaged}")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", NOW)
    run_tick(rt, "j", NOW + timedelta(minutes=1))
    assert contact_row(store, cid).lifecycle_stage == "engaged"
    assert _changes(store) == []


def test_a_handover_records_the_mql_stage_change_it_makes(make_runtime, store):
    """The handover step moves a lead to its stage (forward only) and records it like scoring does."""
    rt = make_runtime({"b2b": journey_yaml("b2b", "- id: to_sales\n  handover: {sla: 4h}")})
    cid = subscriber(store, "cfo@firm.example")
    add_event(store, cid, "signup", NOW)
    run_tick(rt, "b2b", NOW + timedelta(minutes=1))
    with store.reading() as conn:
        events = conn.execute(select(event_t.c.event_id, event_t.c.properties)
                              .where(event_t.c.name == STAGE_CHANGED)).all()
    assert [(e.event_id, e.properties["to"], e.properties["source"]) for e in events] == [
        (f"lifecycle:{cid}:mql", "mql", "handover:b2b")]
