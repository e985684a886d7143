"""Statements built once and run at many clocks (nurture.runtime.sql.prebuilt, the clock
parameters of nurture.conditions.ConditionScope): one long-lived Runtime — as a simulation, the
demo or a served worker has — must decide each tick at that tick's own time, never at the time
the statement happened to be built. And `advance` visits only the steps with something due,
yet carries a contact through every instant step in one tick."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.conditions import ConditionScope, clock_values, compile_condition
from nurture.runtime import run_tick
from nurture.spec.models import Condition
from tests.conftest import utc
from tests.engine_fixtures import add_event, enrollments, journey_yaml, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)
BRANCH_RECENT = """
- id: pause
  wait: 1h
- id: check
  branch:
    when: {event: page_view, within: 2h}
    then: [{id: warm, send: {channel: email, template: hello, subject: Warm}}]
    else: [{id: cold, send: {channel: email, template: other, subject: Cold}}]
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_branch_built_once_judges_each_tick_at_its_own_clock(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", BRANCH_RECENT)})
    early, late = subscriber(store, "early@example.com"), subscriber(store, "late@example.com")
    for cid in (early, late):
        add_event(store, cid, "page_view", T0)
    add_event(store, early, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    run_tick(rt, "j", T0 + timedelta(hours=1, minutes=1))  # page view 1 h ago: within 2 h → warm
    add_event(store, late, "signup", T0 + timedelta(hours=3))
    run_tick(rt, "j", T0 + timedelta(hours=3, minutes=1))
    run_tick(rt, "j", T0 + timedelta(hours=4, minutes=1))  # the same statement; the page view 4 h ago → cold
    assert {(m.contact_id, m.step_id) for m in messages(store)} == {(early, "warm"), (late, "cold")}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_exit_condition_built_once_follows_the_clock(make_runtime, store):
    steps = "- {id: pause, wait: 1d}\n- id: hello\n  send: {channel: email, template: hello, subject: Hello}"
    rt = make_runtime({"j": journey_yaml("j", steps, extra="exit_when:\n  - {event: complaint, within: 1h}")})
    first, second = subscriber(store, "first@example.com"), subscriber(store, "second@example.com")
    for cid in (first, second):
        add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))  # both enrolled; the exit statement is built here
    add_event(store, first, "complaint", T0 + timedelta(hours=2))
    run_tick(rt, "j", T0 + timedelta(hours=2, minutes=30))  # 30 min ago: exits
    add_event(store, second, "complaint", T0 + timedelta(hours=3))
    run_tick(rt, "j", T0 + timedelta(hours=5))  # 2 h ago: outside the hour — stays
    by_contact = {e.contact_id: e.status for e in enrollments(store)}
    assert by_contact == {first: "exited", second: "active"}


def test_a_parametrized_condition_names_every_clock_it_uses():
    cond = Condition.model_validate({"all": [{"event": "purchase", "within": "7d"},
                                             {"not": {"event": "page_view", "within": "1h"}},
                                             {"consent": {"channel": "email", "purpose": "marketing",
                                                          "status": "granted"}}]})
    scope = ConditionScope(T0, {}, clock={})
    compile_condition(cond, scope)
    assert scope.clock == {"clock_0": timedelta(0), "clock_604800": timedelta(days=7), "clock_3600": timedelta(hours=1)}
    later = T0 + timedelta(days=3)
    assert clock_values(scope.clock, later) == {"clock_0": later, "clock_604800": later - timedelta(days=7),
                                                "clock_3600": later - timedelta(hours=1)}
    literal = ConditionScope(T0, {})
    compile_condition(cond, literal)
    assert literal.clock is None  # the default: the clock is a literal of the expression


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_advance_skips_steps_with_nothing_due_yet_carries_a_contact_through_instant_steps(make_runtime, store):
    steps = """
- id: first
  send: {channel: email, template: hello, subject: One}
- id: tag
  update: {attributes: {tagged: true}}
- id: second
  send: {channel: email, template: other, subject: Two}
- {id: pause, wait: 2d}
- id: third
  send: {channel: email, template: hello, subject: Three}
"""
    rt = make_runtime({"j": journey_yaml("j", steps)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    report = run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [m.step_id for m in messages(store)] == ["first", "second"]
    assert report.outcomes[("tag", "updated", None)] == 1
    run_tick(rt, "j", T0 + timedelta(days=1))  # nothing due: nothing moves
    assert [m.step_id for m in messages(store)] == ["first", "second"]
    run_tick(rt, "j", T0 + timedelta(days=2, minutes=2))
    assert [m.step_id for m in messages(store)] == ["first", "second", "third"]
    assert [e.status for e in enrollments(store)] == ["completed"]
