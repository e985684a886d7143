"""Each figure says what it measures, and the views agree (the audit of the report's numbers):
the overview's incremental ROI carries its interval, the total row's ROI says which cost it
was computed over, the terminal follows the locale and names its step cost as the page does,
a report as of T counts nothing after T — each a known answer computed by hand in the
comments, on SQLite and PostgreSQL."""
from __future__ import annotations

import io
from datetime import timedelta

import pytest
from rich.console import Console

from nurture.cli import report_verbs
from nurture.reporting import build_report, views
from nurture.reporting.contract import report_json
from nurture.reporting.format import number_style
from nurture.reporting.html_page import render_html
from nurture.spec.project import load_project
from nurture.store.tables import message_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_event, journey_yaml
from tests.test_report_money import _contacts, _enroll  # the same rows

T0 = utc(2026, 11, 2, 10)
POLICIES = DEFAULT_POLICIES + "unit_costs: {email: 0.5, sms: 0.1}\ncurrency: EUR\n"
MAIL = "- id: mail\n  send: {channel: email, template: hello, subject: Hi}"
GOAL = "goal: {event: purchase, within: 3d}"


def _row(conn, eid, cid, step, status, at, journey="j", sent_at=None):
    """A message row created at `at` (sent then too when its status is `sent`, unless `sent_at`)."""
    conn.execute(message_t.insert().values(
        enrollment_id=eid, contact_id=cid, journey=journey, step_id=step, attempt_key="send", channel="email",
        purpose="marketing", template="hello", status=status, reason="holdout" if status == "holdout" else None,
        due_at=at, created_at=at, attempts=1, sent_at=(sent_at or at) if status == "sent" else None))


def _spec(make_project, journeys, policies=POLICIES):
    spec = load_project(make_project(journeys, policies=policies))
    assert spec.errors == [], [str(e) for e in spec.errors]
    return spec


def _terminal(report, policies, capsys, monkeypatch) -> str:
    """What `nurture report` prints, on a terminal wide enough that no cell wraps."""
    monkeypatch.setattr(report_verbs, "console", Console(width=250))
    capsys.readouterr()
    with number_style(policies):
        report_verbs.print_report(report)
    return capsys.readouterr().out


# ---------------------------------------------------------------- the overview's ROI and its interval


def test_the_overviews_incremental_roi_shows_its_interval_in_every_view(make_project, store, capsys, monkeypatch):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra=GOAL + "\nholdout: 20%")})
    with store.engine.begin() as conn:
        treated, holdout = _contacts(conn, 10, "t"), _contacts(conn, 4, "h")
        for i, cid in enumerate(treated):  # 2 of 10 buy for 100 € after their e-mail
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2) if i < 2 else None,
                          revenue=100.0 if i < 2 else 0.0)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
        for i, cid in enumerate(holdout):  # 1 of 4 buys for 100 €
            eid = _enroll(conn, cid, holdout=True, converted_at=T0 + timedelta(hours=2) if i < 1 else None,
                          revenue=100.0 if i < 1 else 0.0)
            _row(conn, eid, cid, "mail", "holdout", T0 + timedelta(hours=1))
    report = build_report(store, spec, T0 + timedelta(days=4))
    r = report.journey("j")
    # 20 €/treated member, 25 €/holdout member: d = −5, × 10 = −50 €.
    # s²_t = (2·10000 − 200²/10)/9 = 1777.78, s²_h = (10000 − 100²/4)/3 = 2500;
    # se = √(177.778 + 625) = 28.3334; half width 1.959964 · 28.3334 · 10 = 555.323 €
    # cost 10 e-mails × 0.50 € = 5 €: ROI (−50 − 5)/5 = −11×, interval (−605.323 − 5)/5 … (505.323 − 5)/5
    roi = r.incremental_roi
    assert r.cost == 5.0
    assert (roi.value, roi.low, roi.high) == (pytest.approx(-11.0), pytest.approx(-122.0646, abs=1e-4),
                                              pytest.approx(100.0646, abs=1e-4))
    with number_style(spec.policies):
        cell = views.roi_cell(r)
        page = render_html(report)
    assert cell == "-11.0× (incremental) (95% CI -122.1× … 100.1×)"
    overview = page.split("<h2>Overview</h2>")[1].split("</table>")[0]
    row = overview.split("<td>j</td>")[1].split("</tr>")[0]
    # the HTML overview: the ROI and the incremental revenue each with the interval, on a second line
    assert '-11.0× (incremental)<br><span class="ci">95% CI -122.1× … 100.1×</span>' in row
    assert '-50.00 €<br><span class="ci">95% CI -605.32 € … 505.32 €</span>' in row
    assert "95% CI" in row.split("</td>")[4]  # the lift, with its interval too
    terminal = _terminal(report, spec.policies, capsys, monkeypatch)
    assert "-11.0× (incremental) (95% CI -122.1× … 100.1×)" in terminal
    data = report_json(report)["journeys"][0]["incremental_roi"]
    assert (round(data["value"], 1), round(data["low"], 1), round(data["high"], 1)) == (-11.0, -122.1, 100.1)


def test_an_roi_without_an_interval_is_shown_without_one(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra=GOAL + "\nholdout: 20%")})
    with store.engine.begin() as conn:
        t, h = _contacts(conn, 2)
        eid = _enroll(conn, t, converted_at=T0 + timedelta(hours=2), revenue=100.0)
        _row(conn, eid, t, "mail", "sent", T0 + timedelta(hours=1))
        eid = _enroll(conn, h, holdout=True)
        _row(conn, eid, h, "mail", "holdout", T0 + timedelta(hours=1))
    r = build_report(store, spec, T0 + timedelta(days=4)).journey("j")
    # one member per group: no variance, no interval; (100 − 0.5) / 0.5 = 199×
    with number_style(spec.policies):
        assert views.roi_cell(r) == "199.0× (incremental)"


# ---------------------------------------------------------------- the total row


def _two_journeys(make_project, store):
    """small: a holdout, incremental 100 €, cost 10 € fixed + 2 e-mails = 11 €; big: no holdout,
    cost 1,000 € fixed + 1 e-mail = 1,000.50 €."""
    spec = _spec(make_project, {
        "small": journey_yaml("small", MAIL, extra=GOAL + "\nholdout: 50%\nfixed_costs: [{name: t, amount: 10, per: once}]"),
        "big": journey_yaml("big", MAIL, extra=GOAL + "\nfixed_costs: [{name: agency, amount: 1000, per: once}]")})
    with store.engine.begin() as conn:
        t1, t2, h1, h2, b = _contacts(conn, 5)
        eid = _enroll(conn, t1, journey="small", converted_at=T0 + timedelta(hours=2), revenue=100.0)
        _row(conn, eid, t1, "mail", "sent", T0 + timedelta(hours=1), journey="small")
        eid = _enroll(conn, t2, journey="small")
        _row(conn, eid, t2, "mail", "sent", T0 + timedelta(hours=1), journey="small")
        for h in (h1, h2):
            eid = _enroll(conn, h, journey="small", holdout=True)
            _row(conn, eid, h, "mail", "holdout", T0 + timedelta(hours=1), journey="small")
        eid = _enroll(conn, b, journey="big", converted_at=T0 + timedelta(hours=2), revenue=50.0)
        _row(conn, eid, b, "mail", "sent", T0 + timedelta(hours=1), journey="big")
    return spec, build_report(store, spec, T0 + timedelta(days=1))


def test_the_total_rows_roi_names_the_cost_it_was_computed_over(make_project, store, capsys, monkeypatch):
    spec, report = _two_journeys(make_project, store)
    t = report.totals()
    # incremental (100/2 − 0/2) × 2 = 100 € over small's own cost 11 €: (100 − 11)/11 = 8.09×;
    # the row's cost is every journey's: 11 + 1,000.50 = 1,011.50 €
    assert t["incremental_revenue"] == 100.0 and t["costs"]["total"] == 1011.5
    assert t["incremental_roi_cost"] == 11.0 and t["incremental_roi"] == pytest.approx(89 / 11)
    # attributed: 100 + 50 € over both journeys' cost (both goals have a value)
    assert t["roi_cost"] == 1011.5 and t["roi"] == pytest.approx((150 - 1011.5) / 1011.5)
    expected = "8.1× (incremental, journeys with a holdout: cost 11.00 €)"
    with number_style(spec.policies):
        page = render_html(report)
    total_row = page.split('<tr class="total">')[1].split("</tr>")[0]
    assert "1,011.50 €" in total_row and f"<td>{expected}</td>" in total_row
    terminal = _terminal(report, spec.policies, capsys, monkeypatch)
    total_line = next(line for line in terminal.splitlines() if "total" in line and "1,011.50" in line)
    assert "8.1× (incremental," in total_line and "cost 11.00 €" in terminal
    data = report_json(report)["totals"]
    assert data["incremental_roi_cost"] == 11.0 and data["roi_cost"] == 1011.5


def test_the_total_rows_roi_needs_no_note_when_every_journey_is_measured(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra=GOAL + "\nholdout: 50%")})
    with store.engine.begin() as conn:
        t, h = _contacts(conn, 2)
        eid = _enroll(conn, t, converted_at=T0 + timedelta(hours=2), revenue=100.0)
        _row(conn, eid, t, "mail", "sent", T0 + timedelta(hours=1))
        eid = _enroll(conn, h, holdout=True)
        _row(conn, eid, h, "mail", "holdout", T0 + timedelta(hours=1))
    report = build_report(store, spec, T0 + timedelta(days=1))
    with number_style(spec.policies):
        assert views.total_roi_cell(report.totals()) == "199.0× (incremental)"  # (100 − 0.5)/0.5


# ---------------------------------------------------------------- the terminal says what the page says


def test_the_terminals_step_cost_is_the_pages_and_offers_have_their_own_column(make_project, store, capsys, monkeypatch):
    offer = "- id: mail\n  send: {channel: email, template: hello, subject: Hi, offer: {code: SAVE10, value: 10}}"
    spec = _spec(make_project, {"j": journey_yaml("j", offer, extra=GOAL)})
    bought = T0 + timedelta(hours=3)
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        eid = _enroll(conn, cid, converted_at=bought, revenue=90.0)
        _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
    add_event(store, cid, "purchase", bought, {"value": 90, "coupon": "SAVE10"})
    report = build_report(store, spec, T0 + timedelta(days=5))
    with number_style(spec.policies):
        headers, rows = views.step_table(report.journey("j"))
    # one e-mail: 0.50 €; the coupon SAVE10: 10 €, a column of its own on the page
    assert (rows[0][headers.index("cost")], rows[0][headers.index("offer cost")]) == ("0.50 €", "10.00 €")
    terminal = _terminal(report, spec.policies, capsys, monkeypatch)
    steps = terminal.split("Steps", 1)[1]
    header = next(line for line in steps.splitlines() if "conv." in line)
    line = next(line for line in steps.splitlines() if " mail " in line)
    cells = dict(zip([c.strip() for c in header.strip().strip("│┃").split("┃" if "┃" in header else "│")],
                     [c.strip() for c in line.strip().strip("│").split("│")]))
    assert (cells["cost"], cells["offer cost"]) == ("0.50 €", "10.00 €")


def test_the_terminals_lift_and_click_rate_follow_the_locale(make_project, store, capsys, monkeypatch):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra=GOAL + "\nholdout: 20%")},
                 policies=POLICIES + "locale: de\n")
    with store.engine.begin() as conn:
        treated, holdout = _contacts(conn, 8, "t"), _contacts(conn, 2, "h")
        for i, cid in enumerate(treated):  # 3 of 8 buy: 37.5 %; the holdout 0 of 2
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2) if i < 3 else None,
                          revenue=10.0 if i < 3 else 0.0)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
        for cid in holdout:
            eid = _enroll(conn, cid, holdout=True)
            _row(conn, eid, cid, "mail", "holdout", T0 + timedelta(hours=1))
    add_event(store, treated[0], "email_click", T0 + timedelta(hours=1, minutes=5), {"journey": "j", "step": "mail"})
    report = build_report(store, spec, T0 + timedelta(days=4))
    terminal = _terminal(report, spec.policies, capsys, monkeypatch)
    row = next(line for line in terminal.splitlines() if line.startswith("│ j "))
    step = next(line for line in terminal.split("Steps")[1].splitlines() if " mail " in line)
    # lift +37.5 points, written +37,5; 1 click of 8 sent: 12,5 %
    assert "37,5\xa0%" in row and "+37,5 [" in row and "+37.5" not in row
    assert "1 (12,5\xa0%)" in step and "12.5%" not in step


# ---------------------------------------------------------------- a report as of T


def test_a_report_as_of_T_counts_nothing_that_happened_after_T(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml(
        "j", MAIL, extra=GOAL + "\nfixed_costs: [{name: tool, amount: 10, per: day}]")})
    now = T0 + timedelta(days=2)
    with store.engine.begin() as conn:
        a, b, c = _contacts(conn, 3)
        eid = _enroll(conn, a, converted_at=T0 + timedelta(hours=3), revenue=50.0)  # all before T
        _row(conn, eid, a, "mail", "sent", T0 + timedelta(hours=1))
        later = T0 + timedelta(days=10)  # b entered, was mailed and bought 8 days after T
        eid = _enroll(conn, b, converted_at=later + timedelta(hours=3), revenue=900.0, entered=later)
        _row(conn, eid, b, "mail", "sent", later + timedelta(hours=1))
        # c entered and reached the step before T, its e-mail went out (and it bought) after T
        eid = _enroll(conn, c, converted_at=now + timedelta(hours=5), revenue=70.0, entered=T0 + timedelta(days=1))
        _row(conn, eid, c, "mail", "sent", T0 + timedelta(days=1), sent_at=now + timedelta(hours=1))
    report = build_report(store, spec, now)
    j = report_json(report)["journeys"][0]
    # as of T: a and c entered, a converted; one e-mail sent (0.50 €); 2 days × 10 € fixed
    assert (j["entered"], j["converted"], j["attributed_conversions"], j["attributed_revenue"]) == (2, 1, 1, 50.0)
    assert j["costs"] == {"messages": 0.5, "offers": 0.0, "fixed": 20.0, "total": 20.5}
    assert j["roi"] == pytest.approx((50 - 20.5) / 20.5)
    assert (j["recipients"], j["sent"]) == (1, {"email": 1})
    step = j["steps"][0]
    assert (step["reached"], step["sent"], step["conversions"], step["revenue"]) == (2, 1, 1, 50.0)
    assert [(d["day"], d["conversions"], d["revenue"]) for d in report_json(report)["daily"]] == [
        ("2026-11-02", 1, 50.0)]
    # the same data a month later counts all three
    j = report_json(build_report(store, spec, T0 + timedelta(days=30)))["journeys"][0]
    assert (j["entered"], j["attributed_revenue"], j["costs"]["messages"]) == (3, 1020.0, 1.5)


# ---------------------------------------------------------------- a report of some journeys


def test_a_journeys_report_shows_its_own_daily_conversions_and_the_same_attribution(make_project, store):
    spec = _spec(make_project, {"a": journey_yaml("a", MAIL, extra=GOAL), "b": journey_yaml("b", MAIL, extra=GOAL)})
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        eid = _enroll(conn, cid, journey="a")  # a mailed the contact, but did not record the purchase
        _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1), journey="a")
        eid = _enroll(conn, cid, journey="b", converted_at=T0 + timedelta(hours=5), revenue=500.0)
        _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=2), journey="b")
    now = T0 + timedelta(days=3)
    only_a = build_report(store, spec, now, journeys=["a"])
    everything = build_report(store, spec, now)
    assert only_a.daily == [] and only_a.unattributed == (0, 0.0)  # the 500 € day is b's
    assert [(d.isoformat(), n, rev) for d, n, rev in everything.daily] == [("2026-11-02", 1, 500.0)]
    # a's first touch of the purchase is credited to a in both reports alike
    first_touch = {(r.journey, r.step): r.revenue["first_touch"] for r in everything.attribution}
    assert first_touch == {("a", "mail"): 500.0, ("b", "mail"): 0.0}
    assert [(r.journey, r.revenue["first_touch"]) for r in only_a.attribution] == [("a", 500.0)]


# ---------------------------------------------------------------- one purchase, one conversion of a journey


def test_one_purchase_converts_one_enrollment_of_a_re_entered_contact_in_the_real_tick(make_runtime, store):
    from nurture.runtime import run_tick
    from tests.engine_fixtures import enrollments, subscriber
    hello = "- id: hello\n  send: {channel: email, template: hello, subject: Hello}"
    rt = make_runtime({"j": journey_yaml("j", hello, extra="goal: {event: purchase, within: 72h}\nreentry: always")})
    t0 = utc(2026, 3, 4, 10)
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", t0)
    run_tick(rt, "j", t0 + timedelta(minutes=1))  # enters, is mailed, the enrollment completes
    add_event(store, cid, "signup", t0 + timedelta(hours=1))
    run_tick(rt, "j", t0 + timedelta(hours=1, minutes=1))  # enters again, mailed again
    add_event(store, cid, "purchase", t0 + timedelta(hours=2), {"value": 100})
    run_tick(rt, "j", t0 + timedelta(hours=3))
    first, later = enrollments(store, contact_id=cid)  # both windows open at the purchase
    # the tick converts one enrollment with it, the later entry (runtime/outcomes.py)
    assert [(e.converted_at is None, e.revenue) for e in (first, later)] == [(True, 0.0), (False, 100.0)]
    report = build_report(store, rt.project, t0 + timedelta(days=5))
    r = report.journey("j")
    # the shop took 100 € once: one conversion, of the later entry, in every figure
    assert (r.treated, r.converted, r.credited, r.attributed_conversions, r.revenue) == (2, 1, 1, 1, 100.0)
    assert r.treated_sample.total == 100.0
    assert [(s.step, s.sent, s.conversions, s.revenue) for s in r.steps] == [("hello", 2, 1, 100.0)]
    assert sum(rev for _, _, rev in report.daily) == 100.0


def test_the_later_entry_is_the_one_a_shared_purchase_converts(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra=GOAL + """
objectives:
  - {metric: conversions, target: 5, deadline: 2026-12-31}
  - {metric: revenue, target: 500, deadline: 2026-12-31}""")})
    bought = T0 + timedelta(hours=3)
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        first = _enroll(conn, cid, converted_at=bought, revenue=100.0)
        _row(conn, first, cid, "mail", "sent", T0 + timedelta(hours=1))
        later = _enroll(conn, cid, converted_at=bought, revenue=100.0, entered=T0 + timedelta(hours=2))
        _row(conn, later, cid, "mail", "sent", T0 + timedelta(hours=2, minutes=30))
    report = build_report(store, spec, T0 + timedelta(days=2))
    r = report.journey("j")
    j = report_json(report)["journeys"][0]
    # 2 entries, 1 purchase of 100 €: conversion rate 1/2, cost 2 e-mails = 1 €, ROI (100 − 1)/1
    assert (j["treated"], j["converted"], j["credited"], j["attributed_revenue"]) == (2, 1, 1, 100.0)
    assert j["conversion_rate"] == 0.5 and j["roi"] == pytest.approx(99.0)
    assert [o.current for o in r.objectives] == [1.0, 100.0]


# ---------------------------------------------------------------- objectives follow the report's rule


def test_objectives_count_only_conversions_after_the_start_as_the_overview_does(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml("j", "- {id: pause, wait: 1h}\n" + MAIL, extra=GOAL + """
objectives:
  - {metric: conversion_rate, target: 0.5, deadline: 2026-12-31}
  - {metric: conversions, target: 3, deadline: 2026-12-31}
  - {metric: cac, target: 10, deadline: 2026-12-31}""")})
    with store.engine.begin() as conn:
        early1, early2, caused, idle = _contacts(conn, 4)
        for cid in (early1, early2):  # bought during the first wait: left before any send step
            _enroll(conn, cid, converted_at=T0 + timedelta(minutes=30), revenue=50.0)
        eid = _enroll(conn, caused, converted_at=T0 + timedelta(hours=3), revenue=50.0)
        _row(conn, eid, caused, "mail", "sent", T0 + timedelta(hours=1))
        eid = _enroll(conn, idle)
        _row(conn, eid, idle, "mail", "sent", T0 + timedelta(hours=1))
    r = build_report(store, spec, T0 + timedelta(days=2)).journey("j")
    assert (r.treated, r.converted, r.credited) == (4, 3, 1)
    rate, conversions, cac = r.objectives
    # 1 of 4 entries converted after its start: 25 %, as the overview's rate (lift.treated_rate);
    # the CAC: 2 e-mails × 0.50 € / 1 conversion
    assert rate.current == 0.25 == r.lift.treated_rate and rate.on_track is False
    assert conversions.current == 1.0
    assert cac.current == pytest.approx(1.0)


# ---------------------------------------------------------------- the demo's words


def test_the_demo_calls_every_won_deal_all_won_deals_and_gives_the_journeys_own_figure(make_project, store,
                                                                                        tmp_path):
    from collections import Counter

    from nurture.demo import _summary
    spec = _spec(make_project, {"b2b_nurture": journey_yaml("b2b_nurture", MAIL,
                                                            extra="goal: {event: deal_won, within: 90d}")})
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        eid = _enroll(conn, cid, journey="b2b_nurture", converted_at=T0 + timedelta(days=3), revenue=1200.0)
        _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1), journey="b2b_nurture")
    report = build_report(store, spec, T0 + timedelta(days=5))
    out = Console(width=400, record=True, file=io.StringIO())
    _summary(out, report, Counter(), Counter(), [], tmp_path, tmp_path, "sqlite://", 1.0,
             {"won": (3, 5000.0), "open": (1, 800.0)})
    line = next(line for line in out.export_text().splitlines() if "B2B deals" in line)
    # 3 deals won for 5,000 € in all; the journey is credited with the one won after its e-mail
    assert "3 won (5,000.00 €, all won deals; b2b_nurture's attributed revenue: 1,200.00 € from 1 deal(s)" in line
    assert "goal revenue" not in line
