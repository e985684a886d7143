"""`nurture report`: lift with Newcombe's interval (published answers), the three attribution
models, and a whole journey report over hand-written rows whose every figure is computed by
hand in the comments."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from nurture.reporting import build_report, journey_summary
from nurture.reporting.attribution import attribute, position_weights
from nurture.reporting.html_page import render_html
from nurture.reporting.lift import lift, wilson
from nurture.spec.project import load_project
from nurture.store.tables import enrollment_t, message_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_contact, add_suppression, set_consent


# ---------------------------------------------------------------- lift


@pytest.mark.parametrize("x, n, low, high", [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), single proportions, Wilson score interval
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
])
def test_wilson_interval_matches_the_published_values(x, n, low, high):
    assert wilson(x, n) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


@pytest.mark.parametrize("x1, n1, x0, n0, low, high", [
    (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe (1998) table II, method 10
    (9, 10, 3, 10, 0.1705, 0.8090),
])
def test_lift_interval_is_newcombes_hybrid_score_interval(x1, n1, x0, n0, low, high):
    result = lift(x1, n1, x0, n0)
    assert result.difference == pytest.approx(x1 / n1 - x0 / n0)
    assert (result.low, result.high) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))
    assert result.significant


def test_lift_without_a_holdout_has_no_interval():
    result = lift(5, 50, 0, 0)
    assert (result.difference, result.low, result.high) == (0.1, None, None)


# ---------------------------------------------------------------- attribution


def test_position_based_weights_are_40_20_40():
    assert position_weights(1) == [1.0]
    assert position_weights(2) == [0.5, 0.5]
    assert position_weights(4) == [0.4, 0.1, 0.1, 0.4]


def test_attribution_models_side_by_side():
    credit = attribute([(100.0, ["x", "y", "z", "w"]), (50.0, ["y"]), (30.0, ["x", "w"]), (999.0, [])])
    assert credit["last_touch"] == {"w": 130.0, "y": 50.0}
    assert credit["first_touch"] == {"x": 130.0, "y": 50.0}
    assert credit["position_based"] == pytest.approx({"x": 40 + 15, "y": 10 + 50, "z": 10, "w": 40 + 15})


# ---------------------------------------------------------------- a whole report

POLICIES = DEFAULT_POLICIES + "unit_costs: {email: 0.5, sms: 2.0}\n"
CART = """
name: cart
description: Test cart journey.
trigger: {event: add_to_cart}
goal: {event: purchase, within: 3d}
holdout: 20%
steps:
  - {id: reminder, send: {channel: email, template: hello, subject: Hi}}
  - {id: sms_nudge, send: {channel: sms, template: hello}}
"""
D1 = utc(2026, 11, 2, 10)


def _enroll(conn, cid, holdout=False, converted_at=None, revenue=0.0):
    return conn.execute(enrollment_t.insert().values(
        contact_id=cid, journey="cart", version="v1", step_id=None, status="converted" if converted_at else "completed",
        holdout=holdout, entered_at=D1 - timedelta(hours=2), converted_at=converted_at, revenue=revenue,
        defer_count=0, state={})).inserted_primary_key[0]


def _message(conn, eid, cid, step, status, reason=None, channel="email", sent_at=None, attempt="send"):
    conn.execute(message_t.insert().values(
        enrollment_id=eid, contact_id=cid, journey="cart", step_id=step, attempt_key=attempt, channel=channel,
        purpose="marketing", template="hello", status=status, reason=reason, due_at=D1, created_at=D1,
        attempts=1, sent_at=sent_at))


@pytest.fixture
def cart_report(make_project, store):
    spec = load_project(make_project({"cart": CART}, policies=POLICIES))
    assert spec.errors == []
    c = {i: add_contact(store, f"c{i}@example.com") for i in range(1, 11)}
    sent = D1 - timedelta(hours=1)
    with store.engine.begin() as conn:
        e = {i: _enroll(conn, c[i]) for i in range(3, 9)}
        e[1] = _enroll(conn, c[1], converted_at=D1, revenue=100.0)
        e[2] = _enroll(conn, c[2], converted_at=D1 + timedelta(hours=3), revenue=50.0)
        h1 = _enroll(conn, c[9], holdout=True, converted_at=D1 + timedelta(days=2), revenue=80.0)
        h2 = _enroll(conn, c[10], holdout=True)
        for i in range(1, 7):  # reminder sent to contacts 1–6; contact 6 was deferred once first
            _message(conn, e[i], c[i], "reminder", "sent", sent_at=sent)
        _message(conn, e[6], c[6], "reminder", "deferred", "quiet_hours", attempt="defer:1")
        _message(conn, e[7], c[7], "reminder", "suppressed", "no_consent")
        _message(conn, e[8], c[8], "reminder", "skipped", "no_email")
        _message(conn, h1, c[9], "reminder", "holdout", "holdout")
        _message(conn, h2, c[10], "reminder", "holdout", "holdout")
        for i in (1, 2):  # then an SMS to the two who converted
            _message(conn, e[i], c[i], "sms_nudge", "sent", channel="sms", sent_at=sent + timedelta(minutes=30))
    add_suppression(store, "unsubscribed", contact_id=c[3], at=D1)  # after the first message: counts
    set_consent(store, c[4], "email", "revoked", at=D1)  # revoking e-mail consent is an unsubscribe too
    add_suppression(store, "hard_bounce", contact_id=c[5], at=D1)
    add_suppression(store, "unsubscribed", contact_id=c[6], at=D1 - timedelta(days=5))  # before: not this journey's
    return spec, build_report(store, spec, D1 + timedelta(days=5))


def test_journey_figures(cart_report):
    _, report = cart_report
    r = report.journey("cart")
    assert (r.entered, r.treated, r.holdout) == (10, 8, 2)
    assert (r.converted, r.converted_holdout) == (2, 1)
    assert (r.revenue, r.revenue_holdout) == (150.0, 80.0)
    assert r.conversion_rate == 2 / 8
    assert r.lift == lift(2, 8, 1, 2)  # 25 % vs 50 %
    assert r.sent == {"email": 6, "sms": 2}
    assert r.cost == pytest.approx(6 * 0.5 + 2 * 2.0)  # 7.00
    assert r.roi == pytest.approx((150 - 7) / 7)  # attributed: every converter after a message
    assert r.costs == {"messages": 7.0, "offers": 0.0, "fixed": 0.0, "total": 7.0}  # SMS: 1 segment each
    # incremental, the headline: 150 € over 8 treated vs 80 € over 2 in the holdout:
    # (18.75 − 40) × 8 = −170 € — the holdout bought more; ROI (−170 − 7) / 7
    assert r.roi_basis == "incremental"
    assert r.incremental_revenue.value == pytest.approx(-170.0)
    assert r.incremental_roi.value == pytest.approx((-170 - 7) / 7)
    assert r.recipients == 6
    assert r.revenue_per_recipient == 25.0
    assert (r.unsubscribes, r.bounces) == (2, 1)
    assert r.unsubscribe_rate == pytest.approx(2 / 6)
    assert r.bounce_rate == pytest.approx(1 / 6)


def test_step_figures(cart_report):
    _, report = cart_report
    reminder, sms = report.journey("cart").steps
    assert (reminder.step, reminder.reached, reminder.sent, reminder.holdout) == ("reminder", 10, 6, 2)
    assert reminder.deferred == {"quiet_hours": 1}
    assert reminder.suppressed == {"no_consent": 1}
    assert reminder.skipped == {"no_email": 1}
    assert (reminder.conversions, reminder.revenue, reminder.cost) == (2, 150.0, 3.0)
    assert (sms.step, sms.sent, sms.conversions, sms.revenue, sms.cost) == ("sms_nudge", 2, 2, 150.0, 4.0)


def test_attribution_and_daily_conversions(cart_report):
    _, report = cart_report
    rows = {a.step: a for a in report.attribution}
    # contact 1 (100 €) and contact 2 (50 €) each got reminder then sms_nudge
    assert rows["reminder"].revenue == {"last_touch": 0.0, "first_touch": 150.0, "position_based": 75.0}
    assert rows["sms_nudge"].revenue == {"last_touch": 150.0, "first_touch": 0.0, "position_based": 75.0}
    assert rows["sms_nudge"].conversions == {"last_touch": 2.0, "first_touch": 0.0, "position_based": 1.0}
    assert report.unattributed == (1, 80.0)  # the holdout conversion had no message
    assert report.daily == [(date(2026, 11, 2), 2, 150.0), (date(2026, 11, 3), 0, 0.0), (date(2026, 11, 4), 1, 80.0)]


def test_html_report_is_one_self_contained_file(cart_report):
    _, report = cart_report
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2  # daily chart + one funnel
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert "sms_nudge" in page and "150.00 €" in page


def test_journey_summary_for_the_prefect_artifact(cart_report, store):
    spec, _ = cart_report
    markdown, rows = journey_summary(store, spec, "cart", D1 + timedelta(days=5))
    assert markdown.startswith("### cart")
    assert "| 2 | 25.0% | 50.0% | -25.0\u00a0pts" in markdown
    assert [(r["step"], r["sent"], r["deferred"], r["conversions"]) for r in rows] == [
        ("reminder", 6, "quiet_hours 1", 2), ("sms_nudge", 2, "0", 2)]


# ---------------------------------------------------------------- the command


def _nurture(tmp_path, *args):
    import os
    from tests.conftest import REPO
    env = {**os.environ, "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    from tests.cli_inproc import run_cli
    return run_cli(["--project", str(REPO), *args], env, cwd=tmp_path)


def test_cli_report_prints_tables_writes_html_and_json(tmp_path):
    import json
    run = _nurture(tmp_path, "report", "--html", str(tmp_path / "out" / "report.html"))
    assert run.returncode == 0, run.stderr
    assert "cart_abandonment" in run.stdout and "Sales handovers: 0 MQL(s)" in run.stdout
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    run = _nurture(tmp_path, "report", "--json", "--journey", "welcome")
    data = json.loads(run.stdout)
    assert [j["journey"] for j in data["journeys"]] == ["welcome"]
    assert data["journeys"][0]["steps"][0]["step"] == "welcome_value"
    run = _nurture(tmp_path, "report", "--journey", "welcom")
    assert run.returncode == 1 and "did you mean 'welcome'" in run.stderr and "Traceback" not in run.stderr
    run = _nurture(tmp_path, "score", "--now", "2026-11-20T12:00:00Z")
    assert run.returncode == 0 and "scored 0 contact(s)" in run.stdout


@pytest.mark.parametrize("top, ticks", [(1, [0, 1]), (5, [0, 1, 2, 3, 4, 5]), (6, [0, 2, 4, 6]),
                                        (11, [0, 5, 10, 15]), (48, [0, 10, 20, 30, 40, 50]),
                                        (101, [0, 50, 100, 150]), (1234, [0, 500, 1000, 1500])])
def test_the_daily_chart_has_round_y_ticks_up_to_the_highest_day(top, ticks):
    from nurture.reporting.html_page import _nice_ticks
    assert _nice_ticks(top) == ticks
