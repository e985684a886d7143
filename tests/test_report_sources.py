"""Lead sources and business KPIs (issue 12, item 4): leads, MQLs, SQLs, customers, revenue and
ad spend per first-touch source, cost per lead, CAC, ROI, CLV, MQL→SQL rate, lead velocity,
time to first value, speed to lead and to sales — one small world whose every figure is
computed by hand in the comments, on SQLite and PostgreSQL. A figure that does not exist is
null, never 0."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.lifecycle import STAGE_CHANGED, stage_changed_event_id
from nurture.reporting import build_report
from nurture.reporting.contract import report_json
from nurture.reporting.sources import OtherCurrencies, Window, business_kpis, percentile, source_rows, source_total
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, event_t, handover_t, message_t, spend_t, touch_t, version_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import journey_yaml

T = utc(2026, 11, 1)  # the window: November 2026
NOW = T + timedelta(days=29, hours=12)  # 2026-11-30 12:00
WINDOW = Window(T, T + timedelta(days=30))
DAY = timedelta(days=1)


def _contact(conn, email, created, stage="lead", touch=None):
    cid = conn.execute(contact_t.insert().values(email=email, lifecycle_stage=stage, score=0.0, attributes={},
                                                 created_at=created, updated_at=created)).inserted_primary_key[0]
    if touch is not None:
        conn.execute(touch_t.insert().values(contact_id=cid, touch="first", source=touch[0], medium=touch[1],
                                             occurred_at=created))
        conn.execute(touch_t.insert().values(contact_id=cid, touch="last", source="last_touch_never_counts",
                                             medium="x", occurred_at=created))
    return cid


def _event(conn, cid, name, at, **props):
    conn.execute(event_t.insert().values(event_id=f"{cid}:{name}:{at.isoformat()}:{len(props)}", contact_id=cid,
                                         name=name, properties=props, occurred_at=at, received_at=at))


def _became(conn, cid, to, at, previous="lead"):
    conn.execute(event_t.insert().values(event_id=stage_changed_event_id(cid, to), contact_id=cid, name=STAGE_CHANGED,
                                         properties={"from": previous, "to": to, "source": "scoring"},
                                         occurred_at=at, received_at=at))


def _sent(conn, cid, at, journey="j"):
    conn.execute(message_t.insert().values(enrollment_id=None, contact_id=cid, journey=journey, step_id="mail",
                                           attempt_key="send", channel="email", purpose="marketing", template="hello",
                                           status="sent", due_at=at, created_at=at, sent_at=at, attempts=1))


def _spend(conn, day, source, medium, amount, currency="EUR", campaign="c"):
    conn.execute(spend_t.insert().values(day=day.date(), source=source, medium=medium, campaign=campaign,
                                         amount=amount, currency=currency, imported_from="spend.csv", imported_at=T))


@pytest.fixture
def world(store):
    """Contacts (lead time, first touch, stage evidence) — see each line."""
    with store.engine.begin() as conn:
        # a: google/cpc, lead at T+1d (signup), MQL T+3d, SQL T+5d, buys 100 (T+10d) and "50" (T+20d)
        a = _contact(conn, "a@x.com", T + DAY, "customer", ("google", "cpc"))
        _event(conn, a, "signup", T + DAY)
        _became(conn, a, "mql", T + 3 * DAY)
        _became(conn, a, "sql", T + 5 * DAY, "mql")
        _event(conn, a, "purchase", T + 10 * DAY, value=100)
        _event(conn, a, "purchase", T + 20 * DAY, value="50")  # a number written as text counts
        _sent(conn, a, T + DAY + timedelta(minutes=30))  # speed to lead: 30 min
        _event(conn, a, "sales_contacted", T + 3 * DAY + timedelta(minutes=60))  # speed to sales: 60 min
        # b: Google/CPC (case does not matter), lead T+2d, MQL by a hand-over at T+4d (no stage event)
        b = _contact(conn, "b@x.com", T + 2 * DAY, "mql", ("Google", "CPC"))
        conn.execute(handover_t.insert().values(contact_id=b, journey="j", step_id="h", stage="mql", score=70.0,
                                                destination="file", status="delivered", attempts=1,
                                                sla_due_at=T + 5 * DAY, created_at=T + 4 * DAY))
        _sent(conn, b, T + 2 * DAY + timedelta(minutes=120))  # 120 min
        _event(conn, b, "sales_contacted", T + 4 * DAY + timedelta(minutes=600))  # 600 min
        # c: facebook/paid_social, lead T+2d, a message a day later (1440 min)
        c = _contact(conn, "c@x.com", T + 2 * DAY, touch=("facebook", "paid_social"))
        _sent(conn, c, T + 3 * DAY)
        # c2: facebook/organic, lead T+6d
        _contact(conn, "c2@x.com", T + 6 * DAY, touch=("facebook", "organic"))
        # d: google/cpc, lead before the window (T−10d), MQL in it (T+6d); contacted once before
        # its MQL (does not count) and 30 min after it
        d = _contact(conn, "d@x.com", T - 10 * DAY, "mql", ("google", "cpc"))
        _became(conn, d, "mql", T + 6 * DAY)
        _event(conn, d, "sales_contacted", T + 5 * DAY)
        _event(conn, d, "sales_contacted", T + 6 * DAY + timedelta(minutes=30))
        # e: no touch, lead T+3d, buys 30 at T+4d (a customer by its purchase: MQL, SQL, customer
        # then) and "abc" at T+5d (not a number: 0)
        e = _contact(conn, "e@x.com", T + 3 * DAY)
        _event(conn, e, "purchase", T + 4 * DAY, value=30)
        _event(conn, e, "purchase", T + 5 * DAY, value="abc")
        # f: newsletter/email, lead T+1d, stage sql from before stages were recorded (undated)
        _contact(conn, "f@x.com", T + DAY, "sql", ("newsletter", "email"))
        # h, i: older leads, MQL at T−5d and T−20d (before the window: lead velocity)
        h = _contact(conn, "h@x.com", T - 40 * DAY, "mql")
        _became(conn, h, "mql", T - 5 * DAY)
        i = _contact(conn, "i@x.com", T - 40 * DAY, "mql")
        _became(conn, i, "mql", T - 20 * DAY)
        # spend: google/cpc 100 + 100 in the window, 500 the day before it; facebook 60 without a
        # medium (matches every facebook medium); 999 USD (not the project's currency)
        _spend(conn, T, "google", "cpc", 100.0)
        _spend(conn, T + DAY, "google", "cpc", 100.0)
        _spend(conn, T - DAY, "google", "cpc", 500.0)
        _spend(conn, T + 5 * DAY, "facebook", "", 60.0)
        _spend(conn, T + 2 * DAY, "google", "cpc", 999.0, currency="USD")
    return store


def _rows(store, window=WINDOW):
    with store.reading() as conn:
        rows, other = source_rows(conn, window, NOW, "EUR")
    return rows, other


def _as_dicts(rows):
    return [{"source": r.source, "medium": r.medium, "leads": r.leads, "mqls": r.mqls, "sqls": r.sqls,
             "customers": r.customers, "revenue": r.revenue, "spend": r.spend, "cost_per_lead": r.cost_per_lead,
             "cac": r.cac, "roi": r.roi} for r in rows]


def test_each_first_touch_source_has_its_leads_stages_revenue_and_spend(world):
    rows, other = _rows(world)
    assert _as_dicts(rows) == [
        # by leads, then by name
        # spend without a medium: every facebook medium merged into one row; no customer → no CAC
        {"source": "facebook", "medium": "(all)", "leads": 2, "mqls": 0, "sqls": 0, "customers": 0, "revenue": 0.0,
         "spend": 60.0, "cost_per_lead": 30.0, "cac": None, "roi": pytest.approx(-1.0)},
        # a, b (d became a lead before November); MQL a (event), b (hand-over), d (event); SQL a;
        # customer a; revenue 100 + 50; spend 100 + 100 (not the 500 of October 31)
        {"source": "google", "medium": "cpc", "leads": 2, "mqls": 3, "sqls": 1, "customers": 1, "revenue": 150.0,
         "spend": 200.0, "cost_per_lead": 100.0, "cac": 200.0, "roi": pytest.approx(-0.25)},
        # e bought without any touch: MQL, SQL and customer at its purchase; "abc" counts 0
        {"source": "(none)", "medium": "(none)", "leads": 1, "mqls": 1, "sqls": 1, "customers": 1, "revenue": 30.0,
         "spend": None, "cost_per_lead": None, "cac": None, "roi": None},
        # f's stage is not dated: not counted in a window; no spend imported → no cost figures
        {"source": "newsletter", "medium": "email", "leads": 1, "mqls": 0, "sqls": 0, "customers": 0,
         "revenue": 0.0, "spend": None, "cost_per_lead": None, "cac": None, "roi": None},
    ]
    assert (other.spend, other.pipeline) == ({"USD": 999.0}, {})


def test_the_totals_row_sums_the_sources_and_adds_the_journeys_costs_to_a_blended_cac(world):
    rows, other = _rows(world)
    total = source_total(rows, other, journey_cost=40.0)
    assert (total.leads, total.mqls, total.sqls, total.customers) == (6, 4, 2, 2)
    assert (total.revenue, total.spend) == (180.0, 260.0)
    assert total.cost_per_lead == pytest.approx(260 / 6)
    assert total.cac == 130.0  # 260 / 2 new customers
    assert total.roi == pytest.approx((180 - 260) / 260)
    assert total.blended_cac == 150.0  # (260 + 40) / 2
    assert total.spend_other_currencies == {"USD": 999.0}
    assert source_total([], OtherCurrencies()).blended_cac is None  # no customer, no spend: no CAC of any kind


def test_spend_days_are_days_in_the_project_time_zone(store):
    with store.engine.begin() as conn:
        _spend(conn, utc(2026, 10, 31), "google", "cpc", 500.0)  # October 31, as the ad platform exported it
        _spend(conn, T, "google", "cpc", 100.0)
    november_in_berlin = Window(utc(2026, 10, 31, 23), utc(2026, 11, 30, 23))  # midnight to midnight, CET
    with store.reading() as conn:
        berlin, _ = source_rows(conn, november_in_berlin, NOW, "EUR", "Europe/Berlin")
        utc_days, _ = source_rows(conn, november_in_berlin, NOW, "EUR", "UTC")
    assert [r.spend for r in berlin] == [100.0]
    assert [r.spend for r in utc_days] == [600.0]  # read as UTC, the window touches October 31


def test_over_all_time_an_undated_stage_counts(world):
    rows, _ = _rows(world, Window(None, NOW))
    by = {(r.source, r.medium): r for r in rows}
    assert (by[("newsletter", "email")].mqls, by[("newsletter", "email")].sqls) == (1, 1)  # f, legacy sql
    assert (by[("google", "cpc")].leads, by[("google", "cpc")].spend) == (3, 700.0)  # d too; 500 of Oct 31 too
    assert (by[("(none)", "(none)")].leads, by[("(none)", "(none)")].mqls) == (3, 3)  # e, h, i


def test_business_kpis_known_answers(world):
    with world.reading() as conn:
        kpis = business_kpis(conn, WINDOW, NOW)
    assert kpis.clv == 90.0  # (150 + 30) revenue in the last 365 days / 2 paying customers
    assert kpis.mql_to_sql_rate == 0.5  # MQLs of November: a, b, d, e; of them a and e reached SQL
    # MQLs in the 30 days before now (a, b, d, e: 4) against the 30 days before those (h, i: 2)
    assert kpis.lead_velocity_rate == 1.0
    assert kpis.time_to_first_value_days == 5.0  # a: 9 days (T+1d → T+10d), e: 1 day (T+3d → T+4d)
    # a 30, b 120, c 1440 minutes; p90 at rank 0.9·2 = 1.8: 120 + 0.8 × (1440 − 120) = 1176
    assert kpis.speed_to_lead_minutes.as_dict() == {"median": 120.0, "p90": pytest.approx(1176.0), "n": 3}
    # from the MQL time: a 60, b 600, d 30 (its contact before the MQL does not count)
    assert kpis.speed_to_sales_minutes.as_dict() == {"median": 60.0, "p90": pytest.approx(492.0), "n": 3}


def test_kpis_that_do_not_exist_are_none(store):
    with store.reading() as conn:
        kpis = business_kpis(conn, WINDOW, NOW)
    assert (kpis.clv, kpis.mql_to_sql_rate, kpis.lead_velocity_rate, kpis.time_to_first_value_days) == (None,) * 4
    assert kpis.speed_to_lead_minutes.as_dict() == {"median": None, "p90": None, "n": 0}


def test_percentiles_interpolate_linearly_between_the_closest_ranks():
    assert percentile([1, 2, 3, 10], 0.5) == 2.5
    assert percentile([1, 2, 3, 10], 0.9) == pytest.approx(7.9)  # rank 2.7: 3 + 0.7 × 7
    assert percentile([42], 0.9) == 42
    assert percentile([], 0.5) is None


def test_report_json_has_sources_totals_and_kpis_over_the_report_period(world, make_project):
    spec = load_project(make_project({"j": journey_yaml("j", "- id: mail\n  send: {channel: email, template: hello, "
                                                              "subject: Hi}")}, policies=DEFAULT_POLICIES))
    assert spec.errors == []
    with world.engine.begin() as conn:  # the journey's first run opens the report's period: November 1
        conn.execute(version_t.insert().values(journey="j", version="v1", step_order=[], spec={}, created_at=T))
    data = report_json(build_report(world, spec, now=NOW))
    assert data["period"]["start"] == T.isoformat()
    assert [(s["source"], s["medium"], s["leads"], s["customers"], s["spend"], s["cac"]) for s in data["sources"]] == [
        ("facebook", "(all)", 2, 0, 60.0, None), ("google", "cpc", 2, 1, 200.0, 200.0),
        ("(none)", "(none)", 1, 1, None, None), ("newsletter", "email", 1, 0, None, None)]
    assert set(data["sources"][1]) == {"source", "medium", "leads", "mqls", "sqls", "opportunities", "customers",
                                       "revenue", "pipeline", "spend", "cost_per_lead", "cac", "roi"}
    total = data["sources_total"]
    assert (total["leads"], total["customers"], total["spend"], total["cac"]) == (6, 2, 260.0, 130.0)
    assert total["journey_cost"] == 0.0 and total["blended_cac"] == 130.0  # no message of j was sent in a journey
    assert total["spend_other_currencies"] == {"USD": 999.0}
    assert data["kpis"] == {"clv": 90.0, "mql_to_sql_rate": 0.5, "lead_velocity_rate": 1.0,
                            "time_to_first_value_days": 5.0,
                            "speed_to_lead_minutes": {"median": 120.0, "p90": pytest.approx(1176.0), "n": 3},
                            "speed_to_sales_minutes": {"median": 60.0, "p90": pytest.approx(492.0), "n": 3}}
    assert data["objectives"] == [] and data["journeys"][0]["objectives"] == []
    # a report of some journeys only (`--journey`, the per-run summary) leaves the project's figures out
    limited = report_json(build_report(world, spec, now=NOW, journeys=["j"]))
    assert (limited["sources"], limited["sources_total"], limited["kpis"], limited["objectives"]) == ([], None, None, [])


def test_utm_values_off_the_agreed_list_are_listed_with_how_many_contacts_carry_them(store):
    from nurture.reporting.sources import off_standard_utms
    from nurture.spec.models import UtmPolicy
    with store.engine.begin() as conn:
        for i, (source, medium) in enumerate([("google", "cpc"), ("Google", "CPC"), ("fb", "paidsocial"),
                                              ("fb", "paid_social"), ("newsletter", None)]):
            _contact(conn, f"c{i}@example.com", utc(2026, 1, 1), touch=(source, medium))
    policy = UtmPolicy(source=["google", "facebook", "newsletter"], medium=["cpc", "paid_social", "email"])
    with store.reading() as conn:
        found = [(o.parameter, o.value, o.contacts) for o in off_standard_utms(conn, policy)]
        assert off_standard_utms(conn, None) == []
    # "Google"/"CPC" match case-insensitively; the last touch of _contact is off the list too
    assert ("source", "fb", 2) in found and ("medium", "paidsocial", 1) in found
    assert found[:2] == [("medium", "x", 5), ("source", "last_touch_never_counts", 5)]  # most frequent first
    assert not any(value.lower() in ("google", "cpc", "newsletter") for _, value, _ in found)


def test_won_deals_are_revenue_and_open_deals_the_pipeline_of_their_contacts_source(store):
    from nurture.store.tables import deal_t
    start = utc(2026, 3, 1)
    with store.engine.begin() as conn:
        a = _contact(conn, "a@firm.example", start, stage="opportunity", touch=("linkedin", "paid_social"))
        b = _contact(conn, "b@firm.example", start, stage="customer", touch=("linkedin", "paid_social"))
        _event(conn, b, "deal_won", start + 5 * DAY, value=12000.0, deal_id="D-2", currency="EUR")
        for deal_id, cid, outcome, amount in (("D-1", a, "open", 8000.0), ("D-2", b, "won", 12000.0),
                                              ("D-3", None, "open", 99999.0), ("D-4", a, "lost", 5000.0)):
            conn.execute(deal_t.insert().values(crm="import", deal_id=deal_id, contact_id=cid, stage=outcome,
                                                outcome=outcome, amount=amount, currency="EUR",
                                                modified_at=start, created_at=start, updated_at=start))
    rows, _ = source_rows_of(store, Window(start, start + 30 * DAY), start + 30 * DAY)
    (row,) = [r for r in rows if r.source == "linkedin"]
    # the pipeline counts only open deals of known contacts; a won deal is revenue, a lost one nothing
    assert (row.revenue, row.pipeline, row.customers) == (12000.0, 8000.0, 1)


def test_the_pipeline_adds_only_deals_in_the_projects_currency_and_lists_the_others(store):
    """Nurture converts no currencies: an open deal of 1,000 USD is no part of an EUR pipeline
    (docs/crm.md); it is listed by currency beside the total, as spend in another currency is."""
    from nurture.store.tables import deal_t
    start = utc(2026, 3, 1)
    with store.engine.begin() as conn:
        a = _contact(conn, "a@firm.example", start, stage="opportunity", touch=("linkedin", "paid_social"))
        for deal_id, currency, amount in (("D-1", "EUR", 500.0), ("D-2", "USD", 1000.0), ("D-3", None, 70.0),
                                          ("D-4", "USD", 25.0)):
            conn.execute(deal_t.insert().values(crm="import", deal_id=deal_id, contact_id=a, stage="proposal",
                                                outcome="open", amount=amount, currency=currency,
                                                modified_at=start, created_at=start, updated_at=start))
    rows, other = source_rows_of(store, Window(start, start + 30 * DAY), start + 30 * DAY)
    (row,) = [r for r in rows if r.source == "linkedin"]
    assert row.pipeline == 570.0  # a deal without a currency is in the project's (crm.deals)
    assert other.pipeline == {"USD": 1025.0}
    total = source_total(rows, other)
    assert (total.pipeline, total.pipeline_other_currencies) == (570.0, {"USD": 1025.0})


def test_an_absurd_stored_spend_amount_neither_fails_the_report_nor_makes_it_infinite(store):
    """Spend rows stored before the import's cap of 10¹² (two 1e308 overflow a sum: PostgreSQL's
    SUM raises, SQLite's gives inf) count 0; the others are added as ever."""
    with store.engine.begin() as conn:
        for campaign, amount in (("a", 1e308), ("b", 1e308), ("c", 40.0)):
            _spend(conn, WINDOW.start, "google", "cpc", amount, campaign=campaign)
    rows, other = _rows(store)
    (row,) = [r for r in rows if r.source == "google"]
    assert row.spend == 40.0


def source_rows_of(store, window, now):
    with store.reading() as conn:
        return source_rows(conn, window, now, "EUR")


def test_a_stored_value_counts_as_an_amount_from_0_to_1e12_or_as_0(store):
    """`value` is whatever a browser sent. The SQL sums read it as the engine's conversions do
    (conversions.event_fields.value_of): on PostgreSQL "1e400" made the cast fail (the report
    failed), on SQLite it summed to infinity; NaN, negative and absurd values count 0 — and, on
    both databases alike, text that only begins with a number ("45 EUR", "12abc", "1,5") and a
    boolean (SQLite's CAST read them as 45, 12, 1 and 1)."""
    from sqlalchemy import select

    from nurture.reporting.sources import json_number
    values = [12.5, "30", " 7.25 ", "NaN", "Infinity", "-Infinity", "1e400", "-1e400", -5, 1e13, "abc", True,
              None, [3], {"v": 3}, "1e12", 0, "45 EUR", "12abc", "1,5", False]
    with store.engine.begin() as conn:
        cid = _contact(conn, "ann@example.com", T)
        for i, value in enumerate(values):
            conn.execute(event_t.insert().values(contact_id=cid, name="purchase", occurred_at=T, received_at=T, event_id=f"v{i}",
                                                 properties={"value": value}))
        conn.execute(event_t.insert().values(contact_id=cid, name="purchase", occurred_at=T, received_at=T, event_id="none",
                                             properties={}))
    with store.reading() as conn:
        got = [row[0] for row in conn.execute(select(json_number(conn, event_t.c.properties, "value"))
                                              .where(event_t.c.name == "purchase").order_by(event_t.c.id))]
    expected = [12.5, 30.0, 7.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e12, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0]
    assert got == pytest.approx(expected)
