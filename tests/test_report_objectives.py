"""SMART objectives (issue 12, item 5): `nurture validate` checks each objective is measurable and
dated, with `path:line:col`; the report shows baseline, current value, target, deadline,
progress, a linear forecast at the deadline and on-track — each figure a known answer, the
journey metrics over a hand-made world on SQLite and PostgreSQL."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from nurture.lifecycle import STAGE_CHANGED
from nurture.reporting import build_report
from nurture.reporting.contract import report_json
from nurture.reporting.objectives import JourneyMeasure, evaluate
from nurture.spec.models import Objective
from nurture.spec.project import load_project
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, message_t, spend_t, suppression_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import journey_yaml

UTC = ZoneInfo("UTC")
MAIL = "- id: mail\n  send: {channel: email, template: hello, subject: Hi}"


def objective(**fields) -> Objective:
    return Objective.model_validate(fields)


class Measure:
    """A fake metric: `values[(start, end)]`, every call recorded."""

    def __init__(self, values=None, default=None):
        self.values, self.default, self.calls = values or {}, default, []

    def __call__(self, metric, start, end):
        self.calls.append((metric, start, end))
        return self.values.get((start, end), self.default)


# ---------------------------------------------------------------- evaluation, by hand


def test_a_count_is_forecast_linearly_to_the_deadline():
    # November (30 days: Nov 1 00:00 → Dec 1 00:00), half of it gone: 40 conversions → 80 forecast
    now = utc(2026, 11, 16)
    measure = Measure({(utc(2026, 11, 1), now): 40.0})
    o = evaluate(objective(metric="conversions", target=100, start="2026-11-01", deadline="2026-11-30"),
                 measure, now, UTC, None)
    assert (o.current, o.forecast, o.target, o.progress, o.on_track) == (40.0, 80.0, 100.0, 0.4, False)
    assert (o.start, o.deadline_passed, o.unit, o.lower_is_better) == (utc(2026, 11, 1), False, "count", False)


def test_a_relative_target_grows_the_baseline_scaled_to_the_objective_length():
    # baseline October (31 days): 62 → 60 for the 30 days of November; +20 % → 72; the objective
    # starts the day after the baseline
    now = utc(2026, 11, 16)
    measure = Measure({(utc(2026, 10, 1), utc(2026, 11, 1)): 62.0, (utc(2026, 11, 1), now): 40.0})
    o = evaluate(objective(metric="conversions", target="+20%", deadline="2026-11-30",
                           baseline={"from": "2026-10-01", "to": "2026-10-31"}), measure, now, UTC, None)
    assert o.baseline == pytest.approx(60.0) and o.target == pytest.approx(72.0) and o.relative == 0.2
    assert o.forecast == 80.0 and o.on_track is True and o.progress == pytest.approx(40 / 72)
    assert o.baseline_period == (date(2026, 10, 1), date(2026, 10, 31))


def test_a_rate_is_neither_scaled_nor_extrapolated():
    now = utc(2026, 11, 16)
    measure = Measure({(utc(2026, 10, 1), utc(2026, 11, 1)): 0.05, (utc(2026, 11, 1), now): 0.06})
    o = evaluate(objective(metric="conversion_rate", target="+10%", deadline="2026-11-30",
                           baseline={"from": "2026-10-01", "to": "2026-10-31"}), measure, now, UTC, None)
    assert (o.baseline, o.target, o.current, o.forecast, o.on_track) == (0.05, pytest.approx(0.055), 0.06, 0.06, True)
    assert o.unit == "rate"


def test_lower_is_better_is_on_track_at_or_below_the_target():
    now = utc(2026, 11, 16)
    cheap = evaluate(objective(metric="cac", target=50, start="2026-11-01", deadline="2026-11-30"),
                     Measure(default=40.0), now, UTC, None)
    dear = evaluate(objective(metric="cac", target=50, start="2026-11-01", deadline="2026-11-30"),
                    Measure(default=60.0), now, UTC, None)
    assert (cheap.lower_is_better, cheap.on_track, dear.on_track) == (True, True, False)
    # a budget: 100 spent in half the time → 200 by the deadline, over a budget of 150
    budget = evaluate(objective(metric="spend", target=150, start="2026-11-01", deadline="2026-11-30"),
                      Measure(default=100.0), now, UTC, None)
    assert (budget.forecast, budget.on_track) == (200.0, False)


def test_nothing_is_measured_before_the_start():
    measure = Measure(default=5.0)
    o = evaluate(objective(metric="conversions", target=100, start="2026-12-01", deadline="2026-12-31"),
                 measure, utc(2026, 11, 16), UTC, None)
    assert (o.target, o.current, o.forecast, o.progress, o.on_track) == (100.0, None, None, None, None)
    assert measure.calls == []
    no_run = evaluate(objective(metric="conversions", target=100, deadline="2026-12-31"), measure,
                      utc(2026, 11, 16), UTC, None)  # a journey that never ran: no start
    assert (no_run.start, no_run.current, no_run.on_track) == (None, None, None)


@pytest.mark.parametrize("first_run, now", [
    (utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 1, 0)),    # 02:00 CEST → 02:00 CET: no wall-clock time
    (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0)),   # 02:30 CEST → 02:00 CET: less than none
])
def test_in_the_hour_repeated_when_clocks_go_back_a_count_has_no_forecast_yet(first_run, now):
    # the wall-clock span from the journey's first run to now was 0 (ZeroDivisionError: the
    # journey's flow run failed in its report task, `nurture report` exited 70) or negative
    # (a forecast of -3371 recipients)
    berlin = ZoneInfo("Europe/Berlin")
    o = evaluate(objective(metric="recipients", target=100, deadline="2026-12-31"), Measure(default=1.0), now,
                 berlin, first_run)
    assert (o.current, o.forecast, o.on_track) == (1.0, None, None)
    later = evaluate(objective(metric="recipients", target=100, deadline="2026-12-31"), Measure(default=1.0),
                     now + timedelta(hours=2), berlin, first_run)
    assert later.forecast is not None and later.forecast > 1.0


def test_a_baseline_measured_over_no_wall_clock_time_is_missing_not_a_division_by_zero():
    # Cuba goes back from 01:00 to 00:00: the baseline's day start and `now` in the repeated hour
    havana = ZoneInfo("America/Havana")
    now = utc(2026, 11, 1, 5)  # 00:00 CST, midnight the second time
    o = evaluate(objective(metric="conversions", target="+10%", deadline="2026-11-30",
                           baseline={"from": "2026-11-01", "to": "2026-11-01"}), Measure(default=3.0), now, havana, None)
    assert o.baseline is None and o.target is None


def test_after_the_deadline_the_final_value_decides():
    measure = Measure(default=90.0)
    o = evaluate(objective(metric="conversions", target=100, start="2026-11-01", deadline="2026-11-30"),
                 measure, utc(2026, 12, 5), UTC, None)
    assert measure.calls == [("conversions", utc(2026, 11, 1), utc(2026, 12, 1))]  # measured to the deadline's end
    assert (o.current, o.forecast, o.on_track, o.deadline_passed) == (90.0, 90.0, False, True)


def test_a_target_of_zero_has_no_progress_and_a_missing_figure_stays_missing():
    now = utc(2026, 11, 16)
    zero = evaluate(objective(metric="unsubscribe_rate", target=0, start="2026-11-01", deadline="2026-11-30"),
                    Measure(default=0.0), now, UTC, None)
    assert (zero.progress, zero.on_track) == (None, True)
    missing = evaluate(objective(metric="roi", target=2, start="2026-11-01", deadline="2026-11-30"),
                       Measure(default=None), now, UTC, None)
    assert (missing.current, missing.forecast, missing.progress, missing.on_track) == (None, None, None, None)
    no_baseline = evaluate(objective(metric="conversions", target="+20%", deadline="2026-11-30",
                                     baseline={"from": "2026-10-01", "to": "2026-10-31"}),
                           Measure(default=None), now, UTC, None)
    assert (no_baseline.baseline, no_baseline.target, no_baseline.on_track) == (None, None, None)


def test_dates_are_days_in_the_project_time_zone():
    measure = Measure(default=1.0)
    now = datetime(2026, 11, 16, tzinfo=timezone.utc)
    evaluate(objective(metric="conversions", target=10, start="2026-11-01", deadline="2026-11-30"), measure, now,
             ZoneInfo("Europe/Berlin"), None)
    assert measure.calls == [("conversions", utc(2026, 10, 31, 23), now)]  # midnight in Berlin


# ---------------------------------------------------------------- a journey's metrics, by hand

J = """
goal: {event: purchase, within: 3d}
holdout: 20%
fixed_costs: [{name: tool, amount: 1, per: day}]
objectives:
  - {metric: conversions, target: 10, start: 2026-11-01, deadline: 2026-11-10, owner: ann}
  - {metric: revenue, target: +10%, baseline: {from: 2026-10-01, to: 2026-10-31}, deadline: 2026-11-10,
     name: more revenue}
"""
POLICIES = DEFAULT_POLICIES + "unit_costs: {email: 0.5, sms: 0.1}\n"
NOV1, NOV11, NOW = utc(2026, 11, 1), utc(2026, 11, 11), utc(2026, 11, 20)


def test_the_documented_baseline_example_holds_in_a_zone_with_summer_time():
    """62 conversions in October's 31 days are a baseline of 60 for a 30-day objective — in
    Berlin too, where October is 31 days and an hour long (whole days, not seconds)."""
    measure = Measure(default=62.0)
    o = evaluate(objective(metric="conversions", target="+0%", deadline="2026-11-30",
                           baseline={"from": "2026-10-01", "to": "2026-10-31"}),
                 measure, utc(2026, 12, 15), ZoneInfo("Europe/Berlin"), None)
    assert o.baseline == pytest.approx(60.0, abs=1e-9) and o.target == pytest.approx(60.0, abs=1e-9)


def test_a_one_time_cost_is_added_to_the_forecast_not_extrapolated(store, make_project):
    """A 300 € setup fee (`per: once`) a day into a 30-day cost objective forecasts 300 € and is
    on track for a 400 € budget; the daily messages around it are still extrapolated."""
    extra = """fixed_costs: [{name: setup, amount: 300, per: once}]
objectives:
  - {metric: cost, target: 400, start: 2026-11-01, deadline: 2026-11-30}"""
    spec = load_project(make_project({"j": journey_yaml("j", MAIL, extra=extra)}, policies=POLICIES))
    assert spec.errors == [], [str(e) for e in spec.errors]
    with store.engine.begin() as conn:  # the journey's first run on Nov 1: 2 e-mails sent that day
        _member(conn, "a@x.com", NOV1 + timedelta(hours=9), message=("sent", NOV1 + timedelta(hours=9)))
        _member(conn, "b@x.com", NOV1 + timedelta(hours=10), message=("sent", NOV1 + timedelta(hours=10)))
    (o,) = build_report(store, spec, NOV1 + timedelta(days=1)).journey("j").objectives
    per_mail = spec.policies.unit_costs["email"]
    assert o.current == pytest.approx(300 + 2 * per_mail)
    assert o.forecast == pytest.approx(300 + 2 * per_mail * 30) and o.on_track is True


def _contact(conn, email):
    return conn.execute(contact_t.insert().values(email=email, lifecycle_stage="lead", score=0.0, attributes={},
                                                  created_at=utc(2026, 9, 1), updated_at=NOW)).inserted_primary_key[0]


def _member(conn, email, entered, *, holdout=False, message=None, converted=None, revenue=0.0):
    """A contact enrolled in j at `entered`; `message`: (status, at) of its first message row."""
    cid = _contact(conn, email)
    eid = conn.execute(enrollment_t.insert().values(
        contact_id=cid, journey="j", version="v1", step_id=None, holdout=holdout, entered_at=entered,
        status="converted" if converted else "completed", converted_at=converted, revenue=revenue,
        defer_count=0, state={})).inserted_primary_key[0]
    if message is not None:
        status, at = message
        conn.execute(message_t.insert().values(
            enrollment_id=eid, contact_id=cid, journey="j", step_id="mail", attempt_key="send", channel="email",
            purpose="marketing", template="hello", status=status, reason=None if status == "sent" else status,
            due_at=at, created_at=at, sent_at=at if status == "sent" else None, attempts=1))
    return cid


def _event(conn, cid, name, at, **props):
    conn.execute(event_t.insert().values(event_id=f"{cid}:{name}:{at.isoformat()}", contact_id=cid, name=name,
                                         properties=props, occurred_at=at, received_at=at))


@pytest.fixture
def journey_world(store, make_project):
    spec = load_project(make_project({"j": journey_yaml("j", MAIL, extra=J)}, policies=POLICIES))
    assert spec.errors == [], [str(e) for e in spec.errors]
    d = timedelta(days=1)
    with store.engine.begin() as conn:
        # t0: October — the baseline: 62 € of attributed revenue in 31 days
        _member(conn, "t0@x.com", utc(2026, 10, 5), message=("sent", utc(2026, 10, 5)),
                converted=utc(2026, 10, 6), revenue=62.0)
        # t1: sent Nov 2, bought 100 € Nov 3; clicked its mail twice; became MQL after entering
        t1 = _member(conn, "t1@x.com", NOV1 + d, message=("sent", NOV1 + d), converted=NOV1 + 2 * d, revenue=100.0)
        _event(conn, t1, "email_click", NOV1 + d + timedelta(hours=1), journey="j", step="mail")
        _event(conn, t1, "email_click", NOV1 + d + timedelta(hours=2), journey="j", step="mail")
        _event(conn, t1, STAGE_CHANGED, NOV1 + 5 * d, to="mql")
        # t2: sent Nov 2, bought only on Nov 12 (after the window); clicked another journey's
        # mail; unsubscribed Nov 5; asked for a demo Nov 7 (and again in December)
        t2 = _member(conn, "t2@x.com", NOV1 + d, message=("sent", NOV1 + d), converted=NOV11 + d, revenue=50.0)
        _event(conn, t2, "email_click", NOV1 + 2 * d, journey="other", step="x")
        conn.execute(suppression_t.insert().values(contact_id=t2, reason="unsubscribed", created_at=NOV1 + 4 * d))
        _event(conn, t2, "demo_request", NOV1 + 6 * d)
        _event(conn, t2, "demo_request", utc(2026, 12, 1))
        # t3: suppressed on Nov 4 (its start, but nothing delivered), bought 40 € Nov 5; it was an
        # MQL before entering; it clicks a mail of j it never received
        t3 = _member(conn, "t3@x.com", NOV1 + 3 * d, message=("suppressed", NOV1 + 3 * d),
                     converted=NOV1 + 4 * d, revenue=40.0)
        _event(conn, t3, STAGE_CHANGED, NOV1, to="mql")
        _event(conn, t3, "email_click", NOV1 + 4 * d, journey="j", step="mail")
        # t4: entered and sent in October, bought 30 € on Nov 1 at noon
        _member(conn, "t4@x.com", utc(2026, 10, 20), message=("sent", utc(2026, 10, 20)),
                converted=NOV1 + timedelta(hours=12), revenue=30.0)
        # holdout: h1 bought 20 € on Nov 3 (after its holdout row), became MQL; h2 nothing but a demo request
        h1 = _member(conn, "h1@x.com", NOV1 + d, holdout=True, message=("holdout", NOV1 + d),
                     converted=NOV1 + 2 * d, revenue=20.0)
        _event(conn, h1, STAGE_CHANGED, NOV1 + 5 * d, to="mql")
        h2 = _member(conn, "h2@x.com", NOV1 + 2 * d, holdout=True, message=("holdout", NOV1 + 2 * d))
        _event(conn, h2, "demo_request", NOV1 + 6 * d)
        # somebody outside the journey: a demo request and a revoked consent change nothing
        other = _contact(conn, "x@x.com")
        _event(conn, other, "demo_request", NOV1 + 6 * d)
        conn.execute(consent_t.insert().values(contact_id=other, channel="email", purpose="marketing",
                                               status="revoked", source="test", recorded_at=NOV1 + d))
    return spec


def test_journey_metrics_over_a_window_known_answers(store, journey_world):
    report = build_report(store, journey_world, now=NOW)
    with store.reading() as conn:
        m = JourneyMeasure(conn, journey_world, report.journey("j"), NOW)
        value = {metric: m(metric, NOV1, NOV11) for metric in (
            "conversions", "conversion_rate", "revenue", "incremental_revenue", "cost", "cac", "roi",
            "incremental_roi", "recipients", "clicks", "click_rate", "unsubscribe_rate", "mqls", "demo_requests")}
    assert value["conversions"] == 3  # t1 (Nov 3), t3 (Nov 5), t4 (Nov 1 noon); not t2 (Nov 12), not h1
    assert value["conversion_rate"] == pytest.approx(2 / 3)  # entered in the window: t1, t2, t3; converted: t1, t3
    assert value["revenue"] == 130.0  # t1 100 + t4 30 — t3 was never delivered a message
    # entered in the window: treated t1 100, t2 0 (bought after the window), t3 40 → 140/3 per member;
    # holdout h1 20, h2 0 → 10 per member; (140/3 − 10) × 3 = 110
    assert value["incremental_revenue"] == pytest.approx(110.0)
    # 2 e-mails sent in the window × 0.5 + 1 €/day fixed × 10 days (the journey ran since Oct 5)
    assert value["cost"] == pytest.approx(11.0)
    assert value["cac"] == pytest.approx(11 / 3)
    assert value["roi"] == pytest.approx((130 - 11) / 11)
    assert value["incremental_roi"] == pytest.approx((110 - 11) / 11)
    assert value["recipients"] == 2  # first delivered in the window: t1, t2 (t4's was in October)
    assert value["clicks"] == 1  # t1, once; t2 clicked another journey; t3 never received j
    assert value["click_rate"] == 0.5  # of t1, t2
    assert value["unsubscribe_rate"] == 0.5  # t2 of t1, t2
    assert value["mqls"] == 1  # t1; t3 was one before entering; h1 is in the holdout
    assert value["demo_requests"] == 1  # t2 on Nov 7; not in December, not h2 (holdout), not outsiders


def test_a_goal_without_a_value_has_no_revenue_objective_figure(store, make_project):
    spec = load_project(make_project({"j": journey_yaml("j", MAIL, extra="goal: {event: demo_request, within: 3d}")},
                                     policies=POLICIES))
    with store.engine.begin() as conn:
        _member(conn, "t@x.com", NOV1, message=("sent", NOV1), converted=NOV1 + timedelta(days=1))
    report = build_report(store, spec, now=NOW)
    with store.reading() as conn:
        m = JourneyMeasure(conn, spec, report.journey("j"), NOW)
        assert (m("revenue", NOV1, NOV11), m("roi", NOV1, NOV11), m("conversions", NOV1, NOV11)) == (None, None, 1)


def test_report_json_lists_each_journey_objective(store, journey_world):
    data = report_json(build_report(store, journey_world, now=NOW))
    conversions, revenue = data["journeys"][0]["objectives"]
    assert conversions == {
        "metric": "conversions", "name": None, "owner": "ann", "unit": "count", "lower_is_better": False,
        "target": 10.0, "relative": None, "deadline": "2026-11-10", "start": "2026-11-01T00:00:00+00:00",
        "deadline_passed": True, "baseline": None, "baseline_period": None,
        "current": 3.0, "progress": pytest.approx(0.3), "forecast": 3.0, "on_track": False}
    # October: 62 € in 31 days → 20 € for the objective's 10 days; +10 % → 22 €; 130 € by Nov 10
    assert revenue["name"] == "more revenue" and revenue["unit"] == "money"
    assert revenue["baseline_period"] == {"from": "2026-10-01", "to": "2026-10-31"}
    assert revenue["baseline"] == pytest.approx(20.0) and revenue["target"] == pytest.approx(22.0)
    assert revenue["current"] == 130.0 and revenue["progress"] == pytest.approx(130 / 22)
    assert revenue["on_track"] is True


# ---------------------------------------------------------------- the project's objectives

PROJECT_OBJECTIVES = DEFAULT_POLICIES + """
objectives:
  - {metric: leads, target: 20, start: 2026-11-01, deadline: 2026-11-30, owner: growth}
  - {metric: leads, target: +50%, baseline: {from: 2026-10-01, to: 2026-10-31}, deadline: 2026-11-30}
  - {metric: cac, target: 50, start: 2026-11-01, deadline: 2026-11-30}
  - {metric: spend, target: 250, start: 2026-11-01, deadline: 2026-11-30}
  - {metric: leads, target: 10, deadline: 2026-11-30}
"""


def test_policies_objectives_are_measured_on_the_business_kpis(store, make_project):
    spec = load_project(make_project({"j": journey_yaml("j", MAIL)}, policies=PROJECT_OBJECTIVES))
    assert spec.errors == [], [str(e) for e in spec.errors]
    now = utc(2026, 11, 11)  # 10 of November's 30 days
    with store.engine.begin() as conn:
        for i, created in enumerate([utc(2026, 10, 10), utc(2026, 10, 20), utc(2026, 11, 2), utc(2026, 11, 3),
                                     utc(2026, 11, 4)]):
            conn.execute(contact_t.insert().values(email=f"l{i}@x.com", lifecycle_stage="lead", score=0.0,
                                                   attributes={}, created_at=created, updated_at=created))
        conn.execute(spend_t.insert().values(day=date(2026, 11, 2), source="google", medium="cpc", campaign="c",
                                             amount=100.0, currency="EUR", imported_from="s.csv", imported_at=now))
    leads, relative, cac, spend, since_first = report_json(build_report(store, spec, now=now))["objectives"]
    # 3 leads in 10 days → 9 by November 30; 9 / 20 short
    assert (leads["current"], leads["forecast"], leads["progress"], leads["on_track"]) == (
        3.0, pytest.approx(9.0), pytest.approx(0.15), False)
    assert leads["owner"] == "growth"
    # October: 2 leads in 31 days → 60/31 for November's 30; +50 % → 90/31 ≈ 2.90; 9 forecast
    assert relative["baseline"] == pytest.approx(60 / 31) and relative["target"] == pytest.approx(90 / 31)
    assert relative["on_track"] is True
    # no customer yet: no CAC, so neither forecast nor a verdict — never 0
    assert (cac["current"], cac["forecast"], cac["progress"], cac["on_track"]) == (None, None, None, None)
    # a budget: 100 in 10 days → 300 by the deadline, over 250
    assert (spend["lower_is_better"], spend["forecast"], spend["on_track"]) == (True, pytest.approx(300.0), False)
    # no start, no baseline: from the earliest lead (Oct 10) — 5 leads in 32 of 52 days → 8.125
    assert since_first["start"] == "2026-10-10T00:00:00+00:00"
    assert (since_first["current"], since_first["forecast"]) == (5.0, pytest.approx(5 * 52 / 32))


# ---------------------------------------------------------------- nurture validate

LOCATED = re.compile(r"^[^:]+:\d+:\d+: .+")


def _errors(make_project, journeys, **kwargs):
    spec = load_project(make_project(journeys, **kwargs))
    rendered = [str(e) for e in spec.errors]
    assert all(LOCATED.match(e) for e in rendered), rendered
    return rendered


def test_an_unknown_journey_metric_is_located_with_a_suggestion(make_project):
    extra = "goal: {event: purchase, within: 3d}\nobjectives:\n  - {metric: conversion, target: 10, deadline: 2026-12-31}"
    errors = _errors(make_project, {"j": journey_yaml("j", MAIL, extra=extra)})
    assert len(errors) == 1
    assert errors[0].startswith("journeys/j.yaml:5:14: unknown objective metric 'conversion' for a journey (known: "
                                "conversions, conversion_rate, revenue,")
    assert errors[0].endswith("(did you mean 'conversions'?)")


def test_an_objective_the_journey_cannot_measure_is_an_error(make_project):
    extra = ("objectives:\n"
             "  - {metric: revenue, target: 100, deadline: 2026-12-31}\n"
             "  - {metric: incremental_revenue, target: 100, deadline: 2026-12-31}\n"
             "  - {metric: demo_requests, target: 5, deadline: 2026-12-31}")
    errors = _errors(make_project, {"j": journey_yaml("j", "- id: stop\n  exit: done", extra=extra)})
    assert errors == [
        "journeys/j.yaml:4:14: 'revenue' is measured on the journey's conversions: add a goal, "
        "e.g. goal: {event: purchase, within: 7d}",
        "journeys/j.yaml:5:14: 'incremental_revenue' is measured against a holdout: add e.g. holdout: 10% to the "
        "journey",
        "journeys/j.yaml:5:14: 'incremental_revenue' is measured on the journey's conversions: add a goal, "
        "e.g. goal: {event: purchase, within: 7d}"]


def test_a_message_metric_needs_a_send_step(make_project):
    extra = "objectives:\n  - {metric: click_rate, target: 0.05, deadline: 2026-12-31}"
    assert _errors(make_project, {"j": journey_yaml("j", "- id: stop\n  exit: done", extra=extra)}) == [
        "journeys/j.yaml:4:14: 'click_rate' counts messages, and this journey has no send step"]


def test_a_deadline_before_the_objective_starts_is_an_error(make_project):
    extra = ("goal: {event: purchase, within: 3d}\nobjectives:\n"
             "  - {metric: conversions, target: +10%, deadline: 2026-10-15,\n"
             "     baseline: {from: 2026-10-01, to: 2026-10-31}}\n"
             "  - {metric: conversions, target: 5, start: 2026-10-15, deadline: 2026-12-31,\n"
             "     baseline: {from: 2026-10-01, to: 2026-10-31}}")
    errors = _errors(make_project, {"j": journey_yaml("j", MAIL, extra=extra)})
    assert errors == [
        "journeys/j.yaml:5:51: the deadline 2026-10-15 is not after the objective's start 2026-11-01 "
        "(the day after its baseline)",
        "journeys/j.yaml:8:39: the baseline period must end before the objective's start (2026-10-15)"]


def test_a_relative_target_without_a_baseline_and_a_missing_deadline_are_refused(make_project):
    extra = ("goal: {event: purchase, within: 3d}\nobjectives:\n"
             "  - {metric: conversions, target: +10%, deadline: 2026-12-31}\n"
             "  - {metric: conversions, target: 10}")
    errors = _errors(make_project, {"j": journey_yaml("j", MAIL, extra=extra)})
    assert any("needs a 'baseline: {from, to}' period" in e for e in errors)
    assert any(e.startswith("journeys/j.yaml:6:") and "deadline" in e for e in errors)


def test_policies_objectives_use_the_project_metrics(make_project):
    policies = DEFAULT_POLICIES + ("objectives:\n"
                                   "  - {metric: lead, target: 100, deadline: 2026-12-31}\n"
                                   "  - {metric: recipients, target: 100, deadline: 2026-12-31}\n"
                                   "  - {metric: cac, target: 80, deadline: 2026-12-31, owner: growth}\n")
    errors = _errors(make_project, {"j": journey_yaml("j", MAIL)}, policies=policies)
    assert [e.split(" (known:")[0] for e in errors] == [
        "journeys/policies.yaml:13:14: unknown objective metric 'lead' for policies.yaml",
        "journeys/policies.yaml:14:14: unknown objective metric 'recipients' for policies.yaml"]
    assert errors[0].endswith("(did you mean 'leads'?)")


def test_measurable_dated_objectives_validate(make_project):
    extra = ("goal: {event: purchase, within: 3d}\nholdout: 10%\nobjectives:\n"
             "  - {metric: incremental_revenue, target: 1000, deadline: 2026-12-31, owner: ann}\n"
             "  - {metric: conversion_rate, target: +10%, deadline: 2026-12-31,\n"
             "     baseline: {from: 2026-10-01, to: 2026-10-31}}\n"
             "  - {metric: mqls, target: 30, start: 2026-11-01, deadline: 2026-12-31}")
    policies = DEFAULT_POLICIES + "objectives:\n  - {metric: speed_to_lead_minutes, target: 60, deadline: 2026-12-31}\n"
    assert _errors(make_project, {"j": journey_yaml("j", MAIL, extra=extra)}, policies=policies) == []
