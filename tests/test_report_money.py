"""Honest money (issue 12): incremental revenue and ROI against the holdout with their 95 %
intervals (Welch / normal approximation), attributed revenue beside it, conversions before the
first message credited to nothing, real costs (SMS per billed segment, offers, fixed costs),
clicks and opens per step, A/B arms — each figure a known answer computed by hand in the
comments, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import statistics
from datetime import timedelta

import pytest

from nurture.reporting import build_report, journey_summary
from nurture.reporting.contract import report_json
from nurture.reporting.format import count, money, multiple, pct, price, signed_points
from nurture.reporting.html_page import render_html
from nurture.reporting.incremental import Estimate, Sample, incremental_revenue, mean_difference, roi
from nurture.reporting.lift import Z95, lift
from nurture.rendering.email_message import sms_segments
from nurture.runtime import run_tick
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, enrollment_t, message_t, version_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_event, add_subscribers, journey_yaml, messages

T0 = utc(2026, 11, 2, 10)
POLICIES = DEFAULT_POLICIES + "unit_costs: {email: 0.5, sms: 0.1}\n"
MAIL = "- id: mail\n  send: {channel: email, template: hello, subject: Hi}"


# ---------------------------------------------------------------- the statistics, by hand


def test_per_member_statistics_are_the_textbook_ones():
    # 10 members, two of them with revenue: the other eight count as 0
    s = Sample.of([100.0, 50.0], members=10)
    explicit = [100.0, 50.0] + [0.0] * 8
    assert s.mean == statistics.mean(explicit) == 15.0
    assert s.variance == pytest.approx(statistics.variance(explicit))  # (12500 − 150²/10) / 9 = 1138.89
    assert Sample.of([80.0], 1).variance is None  # one member: no variance


def test_incremental_revenue_known_answer():
    # treated: 10 members, 100 € + 50 € → 15 €/member, s² = 1138.889
    # holdout:  5 members, 80 €        → 16 €/member, s² = (6400 − 80²/5) / 4 = 1280
    # d = −1; se = √(1138.889/10 + 1280/5) = √369.889 = 19.23250; 95 %: −1 ± 1.959964·19.23250
    #   = (−38.6950, 36.6950); × 10 treated members
    result = incremental_revenue(Sample.of([100, 50], 10), Sample.of([80], 5))
    assert result.value == pytest.approx(-10.0)
    assert (result.low, result.high) == (pytest.approx(-386.950, abs=1e-3), pytest.approx(366.950, abs=1e-3))
    d = mean_difference(Sample.of([100, 50], 10), Sample.of([80], 5))
    assert d.high - d.value == pytest.approx(Z95 * 19.23250, abs=1e-4)


def test_incremental_roi_maps_the_revenue_interval_through_the_cost():
    # (x − 10) / 10 for 100, 50, 150
    assert roi(Estimate(100.0, 50.0, 150.0), 10.0) == Estimate(9.0, 4.0, 14.0)
    assert roi(Estimate(100.0), 0.0) == Estimate(None)  # nothing spent: no ROI
    assert roi(Estimate(None), 10.0) == Estimate(None)  # no revenue figure: no ROI


def test_no_interval_with_fewer_than_two_members_in_a_group():
    result = incremental_revenue(Sample.of([10.0], 4), Sample.of([], 1))
    assert result == Estimate(10.0, None, None)  # (10/4 − 0) × 4, no variance of one member
    assert incremental_revenue(Sample.of([], 4), Sample(0)).value is None  # no holdout at all


def test_figures_are_written_without_minus_zero_and_counts_as_integers():
    assert signed_points(-0.0004) == "0.0 pts" and signed_points(0.0123) == "+1.2 pts"
    assert money(-0.001) == "0.00 €" and money(1234.5) == "1,234.50 €" and money(None) == "n/a"
    assert pct(-0.00001) == "0.0%" and multiple(-1.0) == "-1.0×" and multiple(None) == "n/a"
    assert count(2.0) == "2" and count(1234) == "1,234" and count(1.5) == "1.5"
    assert price(0.001) == "0.001 €" and price(0.05) == "0.05 €"


# ---------------------------------------------------------------- rows


def _contacts(conn, n, prefix="c", **fields):
    emails = [f"{prefix}{i}@example.com" for i in range(n)]
    conn.execute(contact_t.insert(), [{"email": e, "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                                       "created_at": T0, "updated_at": T0, **fields} for e in emails])
    from sqlalchemy import select
    return [r[0] for r in conn.execute(select(contact_t.c.id).where(contact_t.c.email.in_(emails))
                                       .order_by(contact_t.c.id))]


def _enroll(conn, cid, journey="j", holdout=False, converted_at=None, revenue=0.0, entered=T0):
    return conn.execute(enrollment_t.insert().values(
        contact_id=cid, journey=journey, version="v1", step_id=None,
        status="converted" if converted_at else "completed", holdout=holdout, entered_at=entered,
        converted_at=converted_at, revenue=revenue, defer_count=0, state={})).inserted_primary_key[0]


def _row(conn, eid, cid, step, status, at, journey="j", channel="email", template="hello", attempt="send"):
    """A message row created at `at` (sent then too when its status is `sent`)."""
    conn.execute(message_t.insert().values(
        enrollment_id=eid, contact_id=cid, journey=journey, step_id=step, attempt_key=attempt, channel=channel,
        purpose="marketing", template=template, status=status, reason="holdout" if status == "holdout" else None,
        due_at=at, created_at=at, attempts=1, sent_at=at if status == "sent" else None))


def _spec(make_project, journeys, **kwargs):
    spec = load_project(make_project(journeys, policies=POLICIES, **kwargs))
    assert spec.errors == [], [str(e) for e in spec.errors]
    return spec


HOLDOUT_J = journey_yaml("j", MAIL, extra="goal: {event: purchase, within: 3d}\nholdout: 20%")


# ---------------------------------------------------------------- incremental: the headline


def test_a_holdout_that_converts_like_the_treated_group_means_no_incremental_revenue(make_project, store):
    spec = _spec(make_project, {"j": HOLDOUT_J})
    with store.engine.begin() as conn:
        treated, holdout = _contacts(conn, 100, "t"), _contacts(conn, 20, "h")
        for i, cid in enumerate(treated):  # 10 of 100 buy for 50 € after their e-mail
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2) if i < 10 else None,
                          revenue=50.0 if i < 10 else 0.0)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
        for i, cid in enumerate(holdout):  # 2 of 20 buy for 50 € after the moment they would have got it
            eid = _enroll(conn, cid, holdout=True, converted_at=T0 + timedelta(hours=2) if i < 2 else None,
                          revenue=50.0 if i < 2 else 0.0)
            _row(conn, eid, cid, "mail", "holdout", T0 + timedelta(hours=1))
    r = build_report(store, spec, T0 + timedelta(days=5)).journey("j")
    # 5 €/member in both groups: d = 0. s²_t = (10·2500 − 500²/100)/99 = 227.273,
    # s²_h = (2·2500 − 100²/20)/19 = 236.842; se = √(2.27273 + 11.84211) = 3.756971;
    # half width 1.959964 · 3.756971 · 100 members = 736.353 €
    inc = r.incremental_revenue
    assert inc.value == pytest.approx(0.0, abs=1e-9)
    assert (inc.low, inc.high) == (pytest.approx(-736.353, abs=1e-3), pytest.approx(736.353, abs=1e-3))
    assert r.cost == 50.0  # 100 e-mails × 0.50 €
    # (0 − 50) / 50 = −1; the interval (±736.353 − 50) / 50
    assert r.incremental_roi.value == pytest.approx(-1.0)
    assert (r.incremental_roi.low, r.incremental_roi.high) == (pytest.approx(-15.72706, abs=1e-4),
                                                               pytest.approx(13.72706, abs=1e-4))
    assert r.roi_basis == "incremental" and r.recommendation is None
    # attributed, beside it: every converter's 500 € → (500 − 50) / 50 = 9×, which proves nothing
    assert (r.attributed_revenue, r.roi) == (500.0, 9.0)
    j = report_json(build_report(store, spec, T0 + timedelta(days=5)))["journeys"][0]
    assert j["roi_basis"] == "incremental"
    assert j["revenue"] == j["attributed_revenue"] == 500.0 and j["roi"] == 9.0
    assert j["incremental_revenue"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert j["incremental_roi"]["value"] == pytest.approx(-1.0)
    assert j["incremental_roi"]["low"] < -1 < j["incremental_roi"]["high"]
    assert j["costs"] == {"messages": 50.0, "offers": 0.0, "fixed": 0.0, "total": 50.0} and j["cost"] == 50.0


def test_a_conversion_before_the_first_message_is_credited_to_nothing(make_project, store):
    spec = _spec(make_project, {"j": HOLDOUT_J})
    h = timedelta(hours=1)
    with store.engine.begin() as conn:
        t1, t2, t3, t4, h1, h2, h3 = _contacts(conn, 7)
        e = _enroll(conn, t1, converted_at=T0 + 0.5 * h, revenue=70.0)  # bought before its e-mail
        _row(conn, e, t1, "mail", "sent", T0 + h)
        e = _enroll(conn, t2, converted_at=T0 + 2 * h, revenue=40.0)  # after its e-mail
        _row(conn, e, t2, "mail", "sent", T0 + h)
        e = _enroll(conn, t3, converted_at=T0 + 2 * h, revenue=30.0)  # reached the step, was suppressed
        _row(conn, e, t3, "mail", "suppressed", T0 + h)
        _enroll(conn, t4, converted_at=T0 + 0.2 * h, revenue=25.0)  # left before its first send step
        e = _enroll(conn, h1, holdout=True, converted_at=T0 + 0.5 * h, revenue=90.0)  # before its start
        _row(conn, e, h1, "mail", "holdout", T0 + h)
        e = _enroll(conn, h2, holdout=True, converted_at=T0 + 3 * h, revenue=20.0)
        _row(conn, e, h2, "mail", "holdout", T0 + h)
        _enroll(conn, h3, holdout=True)
    r = build_report(store, spec, T0 + timedelta(days=5)).journey("j")
    assert (r.converted, r.converted_holdout) == (4, 2)  # what the engine recorded, in the funnel
    # attributed: only t2 bought after a delivered message
    assert (r.attributed_conversions, r.revenue) == (1, 40.0)
    # incremental: after the start (first message row — t3's suppressed one, h2's holdout row):
    # treated 40 + 30 over 4 members = 17.50 €, holdout 20 over 3 = 6.667 €; × 4 = 43.333 €
    assert (r.credited, r.credited_holdout) == (2, 1)
    assert r.incremental_revenue.value == pytest.approx((70 / 4 - 20 / 3) * 4)
    assert r.lift == lift(2, 4, 1, 3)


def test_a_goal_without_a_value_has_no_revenue_and_no_roi_never_zero(make_project, store):
    b2b = journey_yaml("b2b", MAIL, extra="goal: {event: demo_request, within: 30d}\nholdout: 20%")
    spec = _spec(make_project, {"b2b": b2b})
    with store.engine.begin() as conn:
        a, b, c = _contacts(conn, 3)
        for cid, holdout in ((a, False), (b, False), (c, True)):
            eid = _enroll(conn, cid, journey="b2b", holdout=holdout, converted_at=T0 + timedelta(hours=3))
            _row(conn, eid, cid, "mail", "holdout" if holdout else "sent", T0 + timedelta(hours=1), journey="b2b")
    for cid in (a, b, c):
        add_event(store, cid, "demo_request", T0 + timedelta(hours=3), {"source": "email"})
    report = build_report(store, spec, T0 + timedelta(days=5))
    r = report.journey("b2b")
    assert not r.has_value and r.roi is None and r.incremental_roi.value is None
    j = report_json(report)["journeys"][0]
    assert j["goal_has_value"] is False
    for key in ("revenue", "attributed_revenue", "roi", "attributed_roi", "revenue_per_recipient",
                "holdout_revenue", "revenue_per_member"):
        assert j[key] is None, key
    assert j["incremental_revenue"] is None and j["incremental_roi"] is None
    assert j["steps"][0]["revenue"] is None
    assert j["cost"] == 1.0 and j["credited"] == 2  # costs and conversions are still counted
    section = render_html(report).split('id="journey-b2b"')[1]
    assert "Goal without a money value" in section and "-1.0×" not in section and "0.00 €, ROI" not in section
    markdown, _ = journey_summary(store, spec, "b2b", T0 + timedelta(days=5))
    assert "revenue and ROI n/a" in markdown and "-1.0×" not in markdown


def test_a_journey_without_a_holdout_shows_attributed_roi_marked_not_proof(make_project, store):
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra="goal: {event: purchase, within: 3d}")})
    with store.engine.begin() as conn:
        a, b = _contacts(conn, 2)
        for cid, converted in ((a, True), (b, False)):
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2) if converted else None,
                          revenue=20.0 if converted else 0.0)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
    report = build_report(store, spec, T0 + timedelta(days=5))
    r = report.journey("j")
    assert r.roi_basis == "attributed" and r.roi == pytest.approx((20 - 1) / 1)
    assert "not proof: no holdout" in r.recommendation and "holdout: 10%" in r.recommendation
    j = report_json(report)["journeys"][0]
    assert j["roi_basis"] == "attributed" and j["roi"] == pytest.approx(19.0)
    assert j["incremental_revenue"] is None and j["incremental_roi"] is None
    page = render_html(report)
    assert "ROI (attributed) 19.0× — not proof: no holdout" in page
    assert "<code>holdout: 10%</code>" in page and "`" not in page


def test_money_in_the_json_is_in_cents_and_ratios_keep_their_precision(make_project, store):
    # a sum of doubles depends on the order the database adds rows in: 221.82 on SQLite was
    # 221.82000000000002 on PostgreSQL. Here 0.1 + 0.2 + 0.4 (= 0.7000000000000001) on both.
    spec = _spec(make_project, {"j": journey_yaml("j", MAIL, extra="goal: {event: purchase, within: 3d}")})
    with store.engine.begin() as conn:
        for cid, revenue in zip(_contacts(conn, 3), (0.1, 0.2, 0.4)):
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2), revenue=revenue)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
    report = build_report(store, spec, T0 + timedelta(days=5))
    r = report.journey("j")
    assert r.attributed_revenue != 0.7 and r.attributed_revenue == pytest.approx(0.7)  # the double, unrounded
    doc = report_json(report)
    j = doc["journeys"][0]
    assert (j["revenue"], j["attributed_revenue"], j["revenue_per_member"]["treated"], j["revenue_per_recipient"],
            j["steps"][0]["revenue"], j["cost"], j["costs"]["total"]) == (0.7, 0.7, 0.23, 0.23, 0.7, 1.5, 1.5)
    assert doc["totals"]["attributed_revenue"] == 0.7 and doc["daily"][0]["revenue"] == 0.7
    assert j["roi"] == r.roi == (r.attributed_revenue - 1.5) / 1.5 != round(r.roi, 2)  # a ratio: every digit
    assert '"revenue": 0.7,' in json.dumps(doc)


# ---------------------------------------------------------------- costs


SMS_J = journey_yaml("s", "- id: nudge\n  send: {channel: sms, template: promo}")


def test_sms_cost_is_per_billed_segment_of_what_was_sent(make_project, store):
    spec = _spec(make_project, {"s": SMS_J},
                 templates={"sms/promo.txt": "Hi {{ contact.first_name }}! Your cart: {{ links.home }}/cart STOP to opt out."})
    with store.engine.begin() as conn:
        al, lucja, gone = (_contacts(conn, 1, "al", first_name="Al")[0], _contacts(conn, 1, "lu", first_name="Łucja")[0],
                           _contacts(conn, 1, "go", first_name="Go")[0])
        for cid in (al, lucja):
            _row(conn, _enroll(conn, cid, journey="s"), cid, "nudge", "sent", T0, journey="s", channel="sms",
                 template="promo")
        _row(conn, _enroll(conn, gone, journey="s"), gone, "nudge", "sent", T0, journey="s", channel="sms",
             template="removed")  # its template no longer exists: one segment, estimated
    link = "http://shop.test/cart?utm_source=nurture&utm_medium=sms&utm_campaign=s&utm_content=nudge"
    gsm = f"Hi Al! Your cart: {link} STOP to opt out."  # 123 GSM-7 characters ≤ 160: 1 segment
    ucs = f"Hi Łucja! Your cart: {link} STOP to opt out."  # Ł is not GSM-7: 126 UCS-2 units > 70 → ⌈126/67⌉ = 2
    assert (len(gsm), sms_segments(gsm)) == (123, ("GSM-7", 1))
    assert (len(ucs), sms_segments(ucs)) == (126, ("UCS-2", 2))
    report = build_report(store, spec, T0 + timedelta(days=1), env={"NURTURE_PUBLIC_URL": "http://shop.test"})
    r = report.journey("s")
    assert (r.sms_segments, r.sms_estimated) == (1 + 2 + 1, 1)
    assert r.cost_messages == pytest.approx(4 * 0.1) and r.steps[0].segments == 4
    j = report_json(report)["journeys"][0]
    assert (j["sms_segments"], j["sms_segments_estimated"], j["steps"][0]["segments"]) == (4, 1, 4)


OFFERS = {
    "shop": journey_yaml("shop", """
        - id: mail
          send: {channel: email, template: hello, subject: Hi}
        - id: coupon
          send: {channel: email, template: hello, subject: Code, offer: {code: SAVE10, value: 10}}
        """, extra="goal: {event: purchase, within: 3d}"),
    "other": journey_yaml("other", """
        - id: pct
          send: {channel: email, template: hello, subject: Twenty, offer: {code: P20, percent: 20}}
        """),
}


def test_offer_costs_are_charged_to_the_journey_that_sent_the_code(make_project, store):
    spec = _spec(make_project, OFFERS)
    h = timedelta(hours=1)
    with store.engine.begin() as conn:
        c1, c2, c3, c4, c5 = _contacts(conn, 5)
        _row(conn, _enroll(conn, c1, "shop"), c1, "mail", "sent", T0, journey="shop")
        _row(conn, _enroll(conn, c2, "other"), c2, "pct", "sent", T0, journey="other")
        _row(conn, _enroll(conn, c2, "shop"), c2, "mail", "sent", T0 + h, journey="shop")
        _row(conn, _enroll(conn, c3, "other"), c3, "pct", "sent", T0, journey="other")
        e5 = _enroll(conn, c5, "shop", converted_at=T0 + h, revenue=60.0)
        _row(conn, e5, c5, "coupon", "sent", T0, journey="shop")
    add_event(store, c1, "purchase", T0 + h, {"value": 45, "discount": 5})  # last message: shop/mail → 5 €
    add_event(store, c2, "purchase", T0 + 2 * h, {"value": 90, "coupon": "save10"})  # shop's code, declared 10 €
    add_event(store, c3, "purchase", T0 + h, {"value": 80, "code": "P20"})  # 20 % off: 80 × 20 / 80 = 20 €
    add_event(store, c4, "purchase", T0 + h, {"value": 30, "discount": 7})  # no message before it: nobody's
    add_event(store, c5, "purchase", T0 + h, {"value": 60})  # untracked, after shop's coupon: assumed used, 10 €
    report = build_report(store, spec, T0 + timedelta(days=2))
    shop, other = report.journey("shop"), report.journey("other")
    assert (shop.cost_offers, shop.offers_redeemed) == (5 + 10 + 10, 3)
    assert (other.cost_offers, other.offers_redeemed) == (20.0, 1)
    assert report.offers_unplaced == 7.0
    steps = {s.step: s.offer_cost for s in shop.steps}
    assert steps == {"mail": 5.0, "coupon": 20.0}
    # shop: 3 e-mails × 0.50 € + 25 € offers; ROI (60 − 26.50) / 26.50, attributed (no holdout)
    assert shop.costs == {"messages": 1.5, "offers": 25.0, "fixed": 0.0, "total": 26.5}
    assert shop.roi == pytest.approx((60 - 26.5) / 26.5)
    assert report_json(report)["offers_unattributed"] == 7.0
    # A tick's summary of one journey (no attribution across journeys) charges the same offers.
    for name in ("shop", "other"):
        full = report.journey(name)
        alone = build_report(store, spec, T0 + timedelta(days=2), journeys=[name], attribution=False).journey(name)
        assert ((alone.cost_offers, alone.offers_redeemed, [(s.step, s.offer_cost) for s in alone.steps])
                == (full.cost_offers, full.offers_redeemed, [(s.step, s.offer_cost) for s in full.steps])), name


def _offer_step(code):
    return f"- id: mail\n  send: {{channel: email, template: hello, subject: Hi, offer: {{code: {code}, value: 10}}}}"


def test_a_code_used_before_the_journey_first_ran_is_no_cost_of_it(make_project, store):
    """A purchase with the journey's code a year before its first run (the code was on a flyer
    long before) is not the journey's offer cost; one from the first run on is."""
    spec = _spec(make_project, {"j": journey_yaml("j", _offer_step("WELCOME10"), extra="goal: {event: purchase, within: 3d}")})
    with store.engine.begin() as conn:
        a, early, later = _contacts(conn, 3)
        _row(conn, _enroll(conn, a), a, "mail", "sent", T0 + timedelta(hours=1))
    add_event(store, early, "purchase", T0 - timedelta(days=365), {"value": 90, "coupon": "WELCOME10"})
    r = build_report(store, spec, T0 + timedelta(days=5)).journey("j")
    assert r.started_at == T0 and (r.cost_offers, r.offers_redeemed) == (0.0, 0)
    add_event(store, later, "purchase", T0 + timedelta(days=1), {"value": 90, "coupon": "WELCOME10"})
    r = build_report(store, spec, T0 + timedelta(days=5)).journey("j")
    assert (r.cost_offers, r.offers_redeemed) == (10.0, 1)


def test_a_journeys_offer_cost_is_the_same_in_its_own_report_and_artifact_as_in_the_full_one(make_project, store):
    """No coupon tracked: one purchase is charged once, to the latest offer received. A report
    (and so the Prefect artifact, built the same way) of journey a alone must not charge a for
    what b's later offer got."""
    goal = "goal: {event: purchase, within: 3d}"
    spec = _spec(make_project, {"a": journey_yaml("a", _offer_step("A10"), extra=goal),
                                "b": journey_yaml("b", _offer_step("B10"), extra=goal)})
    bought = T0 + timedelta(hours=3)
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        for journey, at in (("a", T0 + timedelta(hours=1)), ("b", T0 + timedelta(hours=2))):
            _row(conn, _enroll(conn, cid, journey=journey, converted_at=bought, revenue=90.0), cid, "mail", "sent", at,
                 journey=journey)
    add_event(store, cid, "purchase", bought, {"value": 90})
    now = T0 + timedelta(days=5)
    full = build_report(store, spec, now)
    assert (full.journey("a").cost_offers, full.journey("b").cost_offers) == (0.0, 10.0)
    assert build_report(store, spec, now, journeys=["a"]).journey("a").cost_offers == 0.0


def test_fixed_costs_are_spread_over_the_period_since_the_journey_first_ran(make_project, store):
    fixed = journey_yaml("j", MAIL, extra="""
        fixed_costs:
          - {name: tool, amount: 30.4375, per: month}
          - {name: agency, amount: 7, per: week}
          - {name: setup, amount: 100, per: once}
        """)
    spec = _spec(make_project, {"j": fixed})
    with store.engine.begin() as conn:
        (a,) = _contacts(conn, 1)
        _enroll(conn, a, entered=T0)
    now = T0 + timedelta(days=14)
    # from the first enrollment: 14 days = 14/30.4375 months and 2 weeks → 14 + 14 + 100
    assert build_report(store, spec, now).journey("j").cost_fixed == pytest.approx(128.0)
    with store.engine.begin() as conn:  # the journey first ran a week before anybody entered
        conn.execute(version_t.insert().values(journey="j", version="v0", step_order=[], spec={},
                                               created_at=T0 - timedelta(days=7)))
    r = build_report(store, spec, now).journey("j")
    assert r.started_at == T0 - timedelta(days=7)
    assert r.cost_fixed == pytest.approx(21 + 21 + 100)
    assert r.costs["total"] == r.cost == pytest.approx(142.0)


# ---------------------------------------------------------------- per step: clicks and opens


def test_clicks_and_opens_per_step(make_project, store):
    two = journey_yaml("j", MAIL + "\n- id: second\n  send: {channel: email, template: hello, subject: Again}")
    spec = _spec(make_project, {"j": two})
    with store.engine.begin() as conn:
        c1, c2, c3, stranger = _contacts(conn, 4)
        for cid in (c1, c2, c3):
            e = _enroll(conn, cid)
            _row(conn, e, cid, "mail", "sent", T0)
            if cid == c1:
                _row(conn, e, cid, "second", "sent", T0 + timedelta(days=1))
    at = T0 + timedelta(hours=1)
    add_event(store, c1, "email_click", at, {"campaign": "j", "step": "mail"})
    add_event(store, c1, "email_click", at, {"campaign": "j", "step": "mail", "url": "https://shop/x"})  # same clicker
    add_event(store, c2, "email_click", at, {"url": "https://shop/x?utm_source=nurture&utm_medium=email"
                                                    "&utm_campaign=j&utm_content=mail"})  # by the link's UTM
    add_event(store, stranger, "email_click", at, {"campaign": "j", "step": "mail"})  # was never sent it
    r = build_report(store, spec, T0 + timedelta(days=2)).journey("j")
    mail, second = r.steps
    assert (mail.clicks, mail.click_rate) == (2, pytest.approx(2 / 3))
    assert (second.clicks, second.click_rate) == (0, 0.0)
    assert (mail.opens, mail.open_rate) == (None, None)  # opens are not tracked: not shown as 0 %
    report = build_report(store, spec, T0 + timedelta(days=2))
    assert "opens (unreliable)" not in render_html(report)
    add_event(store, c1, "email_open", at + timedelta(days=1), {"journey": "j", "step": "second"})
    report = build_report(store, spec, T0 + timedelta(days=2))
    mail, second = report.journey("j").steps
    assert (mail.opens, second.opens, second.open_rate) == (0, 1, 1.0)
    step = report_json(report)["journeys"][0]["steps"][1]
    assert (step["clicks"], step["click_rate"], step["opens"], step["open_rate"]) == (0, 0.0, 1, 1.0)
    page = render_html(report)
    assert "opens (unreliable)" in page and "image proxies" in page


# ---------------------------------------------------------------- A/B arms, through real ticks


AB = journey_yaml("ab", """
    - id: test
      split:
        - {name: a, weight: 50, steps: [{id: mail_a, send: {channel: email, template: hello, subject: A}}]}
        - {name: b, weight: 50, steps: [{id: mail_b, send: {channel: email, template: other, subject: B}}]}
    - id: after
      wait: 1d
    """, extra="goal: {event: purchase, within: 3d}\nholdout: 20%")


def test_split_arms_with_their_difference_to_the_first_arm(make_runtime, store):
    from nurture.runtime import run_tick
    from nurture.runtime.stable_random import pick_arm
    rt = make_runtime({"ab": AB}, policies=POLICIES)
    ids = add_subscribers(store, 80, event="signup", at=T0)
    run_tick(rt, "ab", T0 + timedelta(minutes=1))
    from tests.engine_fixtures import enrollments, messages
    rows = enrollments(store, journey="ab")
    treated = [e for e in rows if not e.holdout]
    arms = {e.contact_id: pick_arm("ab", "test", e.contact_id, (("a", 50, None), ("b", 50, None)))[0] for e in treated}
    assert {m.step_id for m in messages(store, status="sent")} == {"mail_a", "mail_b"}
    assert {m.contact_id for m in messages(store, status="holdout")} == {e.contact_id for e in rows if e.holdout}
    # arm b buys: every second member for 30 €; arm a: every fourth
    buyers = [cid for i, cid in enumerate(c for c in ids if arms.get(c) == "b") if i % 2 == 0]
    buyers += [cid for i, cid in enumerate(c for c in ids if arms.get(c) == "a") if i % 4 == 0]
    for cid in buyers:
        add_event(store, cid, "purchase", T0 + timedelta(hours=2), {"value": 30})
    run_tick(rt, "ab", T0 + timedelta(hours=3))
    report = build_report(store, rt.project, T0 + timedelta(hours=4))
    (split,) = report.journey("ab").splits
    n = {arm: sum(1 for v in arms.values() if v == arm) for arm in ("a", "b")}
    x = {arm: sum(1 for c in buyers if arms[c] == arm) for arm in ("a", "b")}
    a, b = split.arms
    assert (a.name, a.recipients, a.conversions, b.name, b.recipients, b.conversions) == (
        "a", n["a"], x["a"], "b", n["b"], x["b"])
    assert b.rate == x["b"] / n["b"] and b.revenue_per_recipient == pytest.approx(30 * x["b"] / n["b"])
    expected = lift(x["b"], n["b"], x["a"], n["a"])  # Newcombe's interval (test_report.py: published values)
    assert (b.difference.value, b.difference.low, b.difference.high) == (expected.difference, expected.low,
                                                                         expected.high)
    assert a.difference == Estimate(0.0)  # the reference arm: 0, no interval
    splits = report_json(report)["journeys"][0]["splits"]
    assert splits[0]["step"] == "test" and [arm["name"] for arm in splits[0]["arms"]] == ["a", "b"]
    assert splits[0]["arms"][1]["difference"]["value"] == pytest.approx(x["b"] / n["b"] - x["a"] / n["a"])
    assert splits[0]["arms"][0]["difference"] == {"value": 0.0, "low": None, "high": None}
    assert set(splits[0]["arms"][1]) == {"name", "recipients", "conversions", "rate", "revenue_per_recipient",
                                        "difference"}
    steps = {s.step: s.arm for s in report.journey("ab").steps}
    assert steps == {"mail_a": "a", "mail_b": "b"}
    # the holdout had its start at the split's send step too: incremental revenue is measured
    assert report.journey("ab").incremental_revenue.value is not None
    assert "<h3>A/B split test</h3>" in render_html(report)
    markdown, _ = journey_summary(store, rt.project, "ab", T0 + timedelta(hours=4))
    assert "A/B split **test**" in markdown and "| b | " in markdown


def live_ab(*arms: tuple[str, int]) -> str:
    """Journey `ab` whose split has these (arm, weight)s, each arm one e-mail `mail_<arm>`:
    written again with other arms, it is a live edit of the split."""
    split = "".join(f"\n    - {{name: {n}, weight: {w}, steps: [{{id: mail_{n}, send: "
                    f"{{channel: email, template: hello, subject: {n}}}}}]}}" for n, w in arms)
    return journey_yaml("ab", f"- id: test\n  split:{split}\n- id: after\n  wait: 1d",
                        extra="goal: {event: purchase, within: 3d}")


def arms_taken(store) -> dict[str, list[int]]:
    """arm → the contacts the split sent through it, read from the e-mails they got."""
    taken: dict[str, list[int]] = {}
    for m in messages(store):
        taken.setdefault(m.step_id.removeprefix("mail_"), []).append(m.contact_id)
    return taken


def reported_arms(store, rt) -> dict[str, tuple[int, int]]:
    (split,) = build_report(store, rt.project, T0 + timedelta(hours=6)).journey("ab").splits
    return {a.name: (a.recipients, a.conversions) for a in split.arms}


def test_reweighting_a_live_split_keeps_past_members_and_their_purchases_in_the_arm_they_took(make_runtime, store):
    rt = make_runtime({"ab": live_ab(("a", 50), ("b", 50))})
    add_subscribers(store, 60, event="signup", at=T0)
    run_tick(rt, "ab", T0 + timedelta(minutes=1))
    taken = arms_taken(store)
    for cid in taken["b"]:  # arm b's members buy, arm a's do not
        add_event(store, cid, "purchase", T0 + timedelta(hours=2), {"value": 30})
    # the marketer re-weights the running split to 90/10; nobody is sent anything new
    edited = make_runtime({"ab": live_ab(("a", 90), ("b", 10))})
    run_tick(edited, "ab", T0 + timedelta(hours=3))  # the new version, and the conversions recorded
    assert len(arms_taken(store)["a"]) == len(taken["a"]) > 0 and len(taken["b"]) > 0
    # a hash of the new weights would put ~90 % of them in a, with b's purchases
    assert reported_arms(store, edited) == {"a": (len(taken["a"]), 0), "b": (len(taken["b"]), len(taken["b"]))}


def test_members_of_an_arm_removed_from_a_live_split_count_in_no_remaining_arm(make_runtime, store):
    rt = make_runtime({"ab": live_ab(("a", 34), ("b", 33), ("c", 33))})
    add_subscribers(store, 60, event="signup", at=T0)
    run_tick(rt, "ab", T0 + timedelta(minutes=1))
    taken = arms_taken(store)
    assert all(taken[arm] for arm in "abc")
    edited = make_runtime({"ab": live_ab(("a", 50), ("b", 50))})  # arm c removed
    run_tick(edited, "ab", T0 + timedelta(hours=3))
    assert reported_arms(store, edited) == {"a": (len(taken["a"]), 0), "b": (len(taken["b"]), 0)}


def test_members_who_passed_a_split_before_arms_were_recorded_are_placed_by_their_messages(make_runtime, store):
    rt = make_runtime({"ab": live_ab(("a", 50), ("b", 50))})
    add_subscribers(store, 60, event="signup", at=T0)
    run_tick(rt, "ab", T0 + timedelta(minutes=1))
    taken = arms_taken(store)
    with store.engine.begin() as conn:  # a database written before the split recorded arms
        conn.execute(enrollment_t.update().values(state={}))
    edited = make_runtime({"ab": live_ab(("a", 90), ("b", 10))})
    run_tick(edited, "ab", T0 + timedelta(hours=3))
    # each one's e-mail of an arm's own step says which arm it took, whatever the weights now
    assert reported_arms(store, edited) == {"a": (len(taken["a"]), 0), "b": (len(taken["b"]), 0)}


def test_own_steps_of_split_arms_leave_out_the_steps_they_share():
    from nurture.compiler import compile_journey
    from nurture.reporting.splits import own_steps
    from nurture.spec.models import Journey
    import yaml
    spec = Journey.model_validate(yaml.safe_load("""
        name: d
        trigger: {event: x}
        steps:
          - id: s
            split:
              - {name: a, weight: 40, steps: [{id: in_a, wait: 1h}, {id: mail_a, wait: 1h}]}
              - {name: b, weight: 40, steps: []}
              - name: c
                weight: 20
                steps:
                  - {id: c_check, branch: {when: {score: {gte: 1}}, then: [{id: c_then, wait: 1h}]}}
          - {id: after, wait: 1h}
        """))
    assert own_steps(compile_journey(spec), "s") == [{"in_a", "mail_a"}, set(), {"c_check", "c_then"}]


def test_dominated_steps_of_a_split():
    from nurture.compiler import compile_journey
    from nurture.reporting.splits import dominated
    from nurture.spec.models import Journey
    import yaml
    spec = Journey.model_validate(yaml.safe_load("""
        name: d
        trigger: {event: x}
        steps:
          - id: check
            branch:
              when: {score: {gte: 1}}
              then:
                - id: s
                  split:
                    - {name: a, weight: 50, steps: [{id: in_a, wait: 1h}]}
                    - {name: b, weight: 50, steps: []}
                - {id: after_split, wait: 1h}
              else:
                - {id: other_path, wait: 1h}
          - {id: rejoined, wait: 1h}
        """))
    assert dominated(compile_journey(spec), "s") == {"in_a", "after_split"}  # 'rejoined' is reached around it


# ---------------------------------------------------------------- readable, and one contract


def test_the_page_the_artifact_and_the_json_show_the_same_money(make_project, store):
    spec = _spec(make_project, {"j": HOLDOUT_J})
    with store.engine.begin() as conn:
        treated, holdout = _contacts(conn, 4, "t"), _contacts(conn, 2, "h")
        for i, cid in enumerate(treated):
            eid = _enroll(conn, cid, converted_at=T0 + timedelta(hours=2) if i < 2 else None,
                          revenue=1234.5 if i < 2 else 0.0)
            _row(conn, eid, cid, "mail", "sent", T0 + timedelta(hours=1))
        for cid in holdout:
            _row(conn, _enroll(conn, cid, holdout=True), cid, "mail", "holdout", T0 + timedelta(hours=1))
    now = T0 + timedelta(days=3)
    report = build_report(store, spec, now)
    r = report.journey("j")
    # 2 × 1234.50 over 4 treated, nothing in the holdout: (617.25 − 0) × 4 = 2,469.00 €
    assert r.incremental_revenue.value == pytest.approx(2469.0)
    page = render_html(report)
    markdown, rows = journey_summary(store, spec, "j", now)
    assert "2,469.00\u00a0€" in markdown  # an amount never wraps away from its currency
    markdown = markdown.replace("\u00a0", " ")
    for text in (page, markdown):
        assert "Incremental revenue 2,469.00 €" in text
        assert "-0.0" not in text and "−0.0" not in text
    assert "2026-11-02 → 2026-11-05 10:00 UTC" in page and "2026-11-02 → 2026-11-05 10:00 UTC" in markdown
    assert '<tr class="total">' in page and "Sales handover" not in page  # no handovers: section hidden
    assert "**" not in page.split("<body>")[1]
    assert rows[0]["sent"] == 4 and isinstance(rows[0]["sent"], int)
    data = report_json(report)
    assert data["period"] == {"start": "2026-11-02T10:00:00+00:00", "end": "2026-11-05T10:00:00+00:00"}
    assert data["totals"]["incremental_revenue"] == pytest.approx(2469.0)
    j = data["journeys"][0]
    for key in ("journey", "entered", "treated", "holdout", "converted", "converted_holdout", "conversion_rate",
                "revenue", "cost", "roi", "recipients", "revenue_per_recipient", "unsubscribe_rate", "bounce_rate",
                "lift", "sent", "steps",  # today's fields stay
                "attributed_revenue", "incremental_revenue", "incremental_roi", "roi_basis", "costs", "splits"):
        assert key in j, key
    for key in ("clicks", "click_rate", "opens", "open_rate"):
        assert key in j["steps"][0]
    json.dumps(data)  # plain JSON all the way down


def test_money_section_of_the_spec_is_validated(make_project):
    bad = journey_yaml("j", "- id: a\n  send: {channel: email, template: hello, subject: x, "
                            "offer: {value: 5, percent: 10}}")
    errors = [str(e) for e in load_project(make_project({"j": bad})).errors]
    assert len(errors) == 1 and "journeys/j.yaml:" in errors[0] and "not both" in errors[0]
    bad = journey_yaml("j", MAIL, extra="fixed_costs: [{name: tool, amount: 5, per: fortnight}]")
    errors = [str(e) for e in load_project(make_project({"j": bad})).errors]
    assert len(errors) == 1 and "fortnight" in errors[0]


def test_the_money_keys_leave_the_version_of_a_journey_without_them_unchanged(make_project):
    """A journey's version is a hash of its full dump: keys that are not set stay out of it, so
    adding `offer` / `fixed_costs` to the language made no running journey a new version."""
    spec = _spec(make_project, {"j": HOLDOUT_J})
    dump = spec.journeys["j"].model_dump(mode="json", by_alias=True)
    assert "fixed_costs" not in dump and "offer" not in dump["steps"][0]["send"]
    priced = _spec(make_project, {"j": HOLDOUT_J.replace("subject: Hi}", "subject: Hi, offer: {value: 5}}")})
    assert priced.journeys["j"].model_dump(mode="json")["steps"][0]["send"]["offer"] == {
        "code": None, "value": 5.0, "percent": None}


def test_numbers_follow_the_project_locale_and_currency():
    from nurture.reporting.format import number_style
    with number_style(None, locale="de"):
        assert money(1234.56) == "1.234,56\xa0€" and money(-0.001) == "0,00\xa0€"
        assert pct(0.125) == "12,5\xa0%" and count(1234) == "1.234" and multiple(-1.0) == "−1,0×"
        assert signed_points(0.0123) == "+1,2 pts"
    with number_style(None, currency="USD", locale="en_US"):
        assert money(1234.5) == "$1,234.50" and pct(0.125) == "12.5%"
    with number_style(None, currency="GBP"):  # no locale: today's layout, the currency's symbol
        assert money(1234.5) == "1,234.50 £"
    assert money(1234.5) == "1,234.50 €"  # outside a style: the default again
