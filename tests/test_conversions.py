"""Offline conversions, the engine's side (the destinations' shared behaviour is the conformance
suite): conversions.yaml validated with locations, which events a declaration means (`mql` is
a stage change), from when, what is read out of untrusted events (value, currency, click ids,
Meta lead ids), each platform's own protocol points, the CSV fallback's files, `nurture
conversions`' exit codes and the nightly flow's step."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.consent_ledger import record_consent
from nurture.conversions.event_fields import click_id, conversion_id, currency_of, lead_id_of, value_of
from nurture.conversions.selection import stage_of
from nurture.lifecycle import record_stage_changes
from nurture.sources import TouchCandidate, Touch, record_event_touches
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import contact_t, conversion_delivery_t, event_t
from tests.conftest import utc, write_project
from tests.test_conversions_conformance import CASES, NOW, TOKEN, Harness, sha

CASE = {c.name: c for c in CASES}


@pytest.fixture
def harness(tmp_path, sqlite_template):
    made: list[Harness] = []

    def make(name: str, extra: str = "") -> Harness:
        h = Harness(CASE[name], tmp_path / name, sqlite_template)
        if extra:
            h.declare(extra)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()
        assert h.server.problems == []


def errors_of(tmp_path: Path, text: str) -> list[str]:
    root = write_project(tmp_path / "p", {})
    (root / "journeys" / "conversions.yaml").write_text(textwrap.dedent(text).lstrip())
    return [str(e) for e in load_project(root).errors]


# ---------------------------------------------------------------- the declaration


def test_a_conversions_file_is_checked_like_a_journey_with_locations_and_suggestions(tmp_path):
    errors = errors_of(tmp_path, """
        conversions:
          - event: purchase
            destinations:
              - {destination: metta, dataset_id: "1"}
              - {destination: google, operating_account: "123-456-7890", conversion_actoin: "9"}
              - {destination: csv, name: buys}
              - {destination: csv, name: buys}
          - event: purchase
            destintions: []
        """)
    assert "journeys/conversions.yaml:4:23: unknown conversions destination 'metta' (did you mean 'meta'?)" in errors
    assert ("journeys/conversions.yaml:5:9: destination 'google' needs 'conversion_action' "
            "(e.g. {destination: google, conversion_action: \"...\"})") in errors
    assert ("journeys/conversions.yaml:5:66: unknown key 'conversion_actoin' for conversions destination 'google' "
            "(did you mean 'conversion_action'?)") in errors
    assert ("journeys/conversions.yaml:5:50: operating_account is the Google Ads customer id, digits only "
            "(no dashes)") in errors
    assert "journeys/conversions.yaml:7:9: 'purchase' goes to csv:buys twice (also destinations[2])" in errors
    assert "journeys/conversions.yaml:9:5: unknown key 'destintions' (did you mean 'destinations'?)" in errors


def test_an_event_declared_twice_and_an_entry_without_destinations_are_errors(tmp_path):
    errors = errors_of(tmp_path, """
        conversions:
          - {event: purchase, destinations: [{destination: csv, name: a}]}
          - {event: purchase, destinations: [{destination: csv, name: b}]}
          - {event: mql, destinations: []}
        """)
    assert errors == [
        "journeys/conversions.yaml:3:13: event 'purchase' is declared twice (also conversions[0]) "
        "(list all its destinations in one entry)",
        "journeys/conversions.yaml:4:32: a conversion needs at least one destination, "
        "e.g. [{destination: csv, name: sales}]"]


def test_a_broken_conversions_file_stops_no_journey_and_is_not_a_journey(tmp_path):
    root = write_project(tmp_path / "p", {"welcome": """
        name: welcome
        trigger: {event: signup}
        steps:
          - {id: hi, send: {channel: email, template: hello, subject: Hi}}
        """})
    (root / "journeys" / "conversions.yaml").write_text("conversions: [{event: purchase, destinations: nope}]\n")
    project = load_project(root)
    assert project.errors and project.fatal_errors == [] and project.errors_of("welcome") == []
    assert "conversions" not in project.journey_names and project.conversions == []
    assert project.file_errors("conversions") == project.errors


# ---------------------------------------------------------------- which events, from when


def test_mql_means_the_moment_a_contact_became_an_mql_and_only_that(harness):
    h = harness("csv")
    (h.root / "journeys" / "conversions.yaml").write_text(
        "conversions:\n  - {event: mql, destinations: [{destination: csv, name: won_deals}]}\n")
    h.project = load_project(h.root)
    assert (stage_of("mql"), stage_of("sql"), stage_of("lead"), stage_of("purchase")) == ("mql", "sql", None, None)
    a, b = h.contact("a@example.com"), h.contact("b@example.com")
    with h.store.engine.begin() as conn:
        record_stage_changes(conn, [(a, "lead"), (b, "lead")], "mql", NOW - timedelta(days=2), "scoring")
        record_stage_changes(conn, [(a, "mql")], "sql", NOW - timedelta(days=1), "crm")
        record_stage_changes(conn, [(a, "mql")], "mql", NOW - timedelta(hours=1), "scoring")  # recorded once
    report = h.run()
    assert (report.sent, report.due) == (2, 2)
    assert h.held() == {conversion_id(f"lifecycle:{a}:mql"), conversion_id(f"lifecycle:{b}:mql")}
    assert {row["conversion"] for _, row in h.server.received_events} == {"mql"}


def test_without_since_only_what_the_platform_takes_is_read_and_future_events_wait(harness):
    h = harness("meta")
    cid = h.contact("a@example.com")
    old = h.purchase(cid, at=NOW - timedelta(days=8))  # Meta stopped taking it: never even read
    recent = h.purchase(cid, at=NOW - timedelta(days=6))
    future = h.purchase(cid, at=NOW + timedelta(hours=3))  # after the run's clock: waits
    report = h.run()
    assert (report.due, report.sent) == (1, 1) and h.held() == {recent}
    h.server.clock = NOW + timedelta(hours=4)
    assert h.run(NOW + timedelta(hours=4)).sent == 1 and h.held() == {recent, future}
    assert old not in h.received()


def test_since_is_honoured_literally_and_what_is_too_old_for_the_platform_is_recorded_as_such(harness):
    h = harness("meta")
    (h.root / "journeys" / "conversions.yaml").write_text(textwrap.dedent("""
        conversions:
          - event: purchase
            since: 2026-11-01
            destinations: [{destination: meta, dataset_id: "1234567890"}]
        """))
    h.project = load_project(h.root)
    cid = h.contact("a@example.com")
    h.purchase(cid, at=utc(2026, 10, 30))  # before since: never read
    h.purchase(cid, at=utc(2026, 11, 5))  # after since, but older than Meta's 7 days
    fresh = h.purchase(cid, at=NOW - timedelta(days=1))
    report = h.run()
    assert (report.due, report.sent, report.skipped_reasons) == (2, 1, {"too_old": 1})
    assert h.held() == {fresh}


def test_a_run_dated_in_the_past_reads_nothing_meta_finds_too_old_by_the_real_clock(harness):
    h = harness("meta")
    h.server.clock = None  # Meta judges an event's age by the real time of the request
    wall = datetime.now(timezone.utc)
    fresh, stale = [], []
    for i in range(3):  # interleaved, as events arrive
        fresh.append(h.purchase(h.contact(f"fresh{i}@example.com"), at=wall - timedelta(days=4)))
        stale.append(h.purchase(h.contact(f"stale{i}@example.com"), at=wall - timedelta(days=9)))
    report = h.run(wall - timedelta(days=3))  # a nightly run started 3 days late: 9 days old, not 6
    assert (report.status, report.due, report.sent, report.failed) == ("ok", 3, 3, 0)
    assert h.held() == set(fresh) and not set(stale) & set(h.received())


def test_a_run_dated_in_the_past_skips_as_too_old_what_an_old_since_reads(harness):
    h = harness("meta")
    h.server.clock = None
    wall = datetime.now(timezone.utc)
    (h.root / "journeys" / "conversions.yaml").write_text(textwrap.dedent(f"""
        conversions:
          - event: purchase
            since: {(wall - timedelta(days=20)).date().isoformat()}
            destinations: [{{destination: meta, dataset_id: "1234567890"}}]
        """))
    h.project = load_project(h.root)
    fresh = h.purchase(h.contact("fresh@example.com"), at=wall - timedelta(days=4))
    h.purchase(h.contact("stale@example.com"), at=wall - timedelta(days=9))  # read: since is older
    report = h.run(wall - timedelta(days=3))
    assert (report.sent, report.failed, report.skipped_reasons) == (1, 0, {"too_old": 1})
    assert h.held() == {fresh}


def test_meta_physical_store_events_may_be_62_days_old(harness):
    h = harness("meta", extra=", action_source: physical_store")
    month_old = h.purchase(h.contact("a@example.com"), at=NOW - timedelta(days=30))
    report = h.run()
    assert report.sent == 1 and h.held() == {month_old}
    (event,) = h.server.conversions("1234567890").values()
    assert event["action_source"] == "physical_store"


def test_the_same_run_on_sqlite_and_postgresql_queues_sends_and_skips_in_sql(store, tmp_path):
    """enqueue's INSERT … SELECT … NOT EXISTS (ON CONFLICT DO NOTHING), the stage's JSON
    `to`, the page join and the outcome updates, on both databases."""
    from nurture.conversions.send import send_conversions
    from nurture.registry import IntegrationContext
    root = write_project(tmp_path / "p", {})
    (root / "journeys" / "conversions.yaml").write_text(textwrap.dedent("""
        conversions:
          - {event: purchase, destinations: [{destination: csv, name: buys}]}
          - {event: mql, destinations: [{destination: csv, name: mqls}]}
        """))
    project = load_project(root)
    with store.engine.begin() as conn:
        ids = []
        for i, ads in enumerate(("granted", "granted", None)):
            cid = conn.execute(contact_t.insert().values(
                email=f"c{i}@example.com", lifecycle_stage="lead", score=0.0, attributes={},
                created_at=NOW - timedelta(days=9), updated_at=NOW - timedelta(days=9))).inserted_primary_key[0]
            ids.append(cid)
            if ads:
                record_consent(conn, cid, "ads", ads, source="test", at=NOW - timedelta(days=9))
            conn.execute(event_t.insert().values(event_id=f"o{i}", contact_id=cid, name="purchase",
                                                 properties={"value": 10 + i}, occurred_at=NOW - timedelta(days=1),
                                                 received_at=NOW - timedelta(days=1)))
        record_stage_changes(conn, [(ids[0], "lead")], "mql", NOW - timedelta(hours=5), "scoring")
        record_stage_changes(conn, [(ids[1], "lead")], "sql", NOW - timedelta(hours=5), "crm")
    context = IntegrationContext(root, tmp_path / ".nurture", {})
    first = {r.target: (r.due, r.sent, r.skipped) for r in send_conversions(store, project, NOW, context)}
    assert first == {"csv:buys": (3, 2, 1), "csv:mqls": (1, 1, 0)}
    again = {r.target: (r.due, r.sent, r.requests) for r in send_conversions(store, project, NOW, context)}
    assert again == {"csv:buys": (0, 0, 0), "csv:mqls": (0, 0, 0)}
    with store.engine.connect() as conn:
        rows = conn.execute(select(conversion_delivery_t.c.target, conversion_delivery_t.c.status)).all()
        conn.rollback()
    assert sorted(rows) == [("csv:buys", "sent"), ("csv:buys", "sent"), ("csv:buys", "skipped"), ("csv:mqls", "sent")]


# ---------------------------------------------------------------- what is read out of an event


@pytest.mark.parametrize("value, expected", [
    (49.9, 49.9), (12, 12.0), ("19.99", 19.99), (" 7 ", 7.0), (0, 0.0), (1e12, 1e12), (12.345, 12.35),
    (-5, None), (True, None), (None, None), ("NaN", None), (float("nan"), None), (float("inf"), None),
    ("1e400", None), (10 ** 400, None), ("12 EUR", None), ({"amount": 3}, None), ("9" * 50, None), (1e13, None),
])
def test_the_value_is_a_finite_amount_in_range_or_nothing(value, expected):
    assert value_of({"value": value}) == expected
    assert value_of("not a mapping") is None


def test_currency_lead_id_click_ids_and_the_deduplication_id_trust_nothing():
    assert currency_of({"currency": " usd "}, "EUR") == "USD"
    assert [currency_of({"currency": c}, "EUR") for c in ("EURO", "€", 42, None)] == ["EUR"] * 4
    assert lead_id_of({"lead_id": "123456789012345"}, {}) == "123456789012345"
    assert lead_id_of({}, {"meta_lead_id": 1234567890123456}) == "1234567890123456"
    assert lead_id_of({"lead_id": "12345"}, {"lead_id": "x" * 16}) is None
    assert click_id(" Cj0KCQ-abc_1 ") == "Cj0KCQ-abc_1"
    assert [click_id(v) for v in ("two words", "a" * 501, "\u00e9t\u00e9", "line\nbreak", 7, "")] == [None] * 6
    assert conversion_id("order-1") == conversion_id("order-1") != conversion_id("order-2")
    assert conversion_id("order-1").startswith("nurture-") and len(conversion_id("jane@x.org")) == 40
    assert "jane" not in conversion_id("jane@x.org")


def test_a_currency_that_is_no_iso_4217_code_falls_back_to_the_policy_currency():
    assert [currency_of({"currency": c}, "EUR") for c in ("usd", "JPY", "chf")] == ["USD", "JPY", "CHF"]
    for made_up in ("ABC", "FOO", "PTS", "BTC"):  # a typo, loyalty points, a crypto ticker: three letters, no code
        assert currency_of({"currency": made_up}, "EUR") == "EUR"


def test_value_and_currency_reach_the_platform_as_the_event_says_else_the_policy_currency(harness):
    h = harness("linkedin")
    cid = h.contact("a@example.com")
    usd = h.purchase(cid, value="120.5", currency="usd")
    policy = h.purchase(cid, value=30, currency="dollars")
    made_up = h.purchase(cid, value=0, currency="ABC")  # three letters, but no ISO 4217 code
    none = h.purchase(cid, value="NaN")
    assert h.run().sent == 4
    got = h.server.conversions("urn:lla:llaPartnerConversion:123")
    assert got[usd]["conversionValue"] == {"currencyCode": "USD", "amount": "120.50"}
    assert got[policy]["conversionValue"] == {"currencyCode": "EUR", "amount": "30.00"}  # policies.yaml's default
    assert got[made_up]["conversionValue"] == {"currencyCode": "EUR", "amount": "0.00"}
    assert "conversionValue" not in got[none]


def touch(h: Harness, cid: int, kind: str, value: str, at, event_id: str) -> None:
    with h.store.engine.begin() as conn:
        conn.execute(event_t.insert().values(event_id=event_id, contact_id=cid, name="page_view",
                                             properties={kind: value}, occurred_at=at, received_at=at))
        record_event_touches(conn, [TouchCandidate(cid, Touch("google", "cpc", click_id_type=kind, click_id=value),
                                                   at, event_id)])
    if hasattr(h.server, "clicks"):  # the platform knows when its own ads were clicked
        h.server.clicks[value] = at


def test_google_gets_the_events_own_click_id_else_the_last_touchs_else_the_first(harness):
    h = harness("google")
    first_only, last_wins, own = (h.contact(f"{n}@example.com") for n in ("first", "last", "own"))
    touch(h, first_only, "gclid", "GCLID-FIRST", NOW - timedelta(days=20), "t1")
    touch(h, first_only, "fbclid", "FB-LATER", NOW - timedelta(days=2), "t2")  # the last touch is not Google's
    touch(h, last_wins, "gclid", "GCLID-OLD", NOW - timedelta(days=20), "t3")
    touch(h, last_wins, "wbraid", "WBRAID-NEW", NOW - timedelta(days=2), "t4")
    touch(h, own, "gclid", "GCLID-TOUCH", NOW - timedelta(days=2), "t5")
    ids = [h.purchase(first_only), h.purchase(last_wins), h.purchase(own, gclid="GCLID-EVENT")]
    assert h.run().sent == 3
    got = h.server.conversions("987654321")
    assert [got[i]["adIdentifiers"] for i in ids] == [{"gclid": "GCLID-FIRST"}, {"wbraid": "WBRAID-NEW"},
                                                       {"gclid": "GCLID-EVENT"}]
    request = h.server.requests[0].json()
    assert request["destinations"] == [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                                        "productDestinationId": "987654321"}]
    assert request["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
    assert request["validateOnly"] is False and request["encoding"] == "HEX"
    assert got[ids[0]]["eventTimestamp"] == "2026-11-20T23:00:00Z" and got[ids[0]]["eventSource"] == "OTHER"


def test_google_never_credits_a_conversion_to_a_click_after_it_or_outside_its_90_day_window(harness):
    h = harness("google")
    bought = NOW - timedelta(days=3)
    later_click, ancient, edge = (h.contact(f"{n}@example.com") for n in ("later", "ancient", "edge"))
    touch(h, later_click, "gclid", "GCLID-BEFORE", bought - timedelta(days=5), "t1")  # led to the sale
    touch(h, later_click, "gclid", "GCLID-AFTER", bought + timedelta(days=1), "t2")  # the last touch, a day later
    touch(h, ancient, "gclid", "GCLID-ANCIENT", bought - timedelta(days=400), "t3")
    touch(h, ancient, "wbraid", "WBRAID-91", bought - timedelta(days=91), "t4")
    touch(h, edge, "gbraid", "GBRAID-90", bought - timedelta(days=90), "t5")  # the window's last day still counts
    ids = [h.purchase(c, at=bought) for c in (later_click, ancient, edge)]
    assert h.run().sent == 3
    got = h.server.conversions("987654321")
    assert got[ids[0]]["adIdentifiers"] == {"gclid": "GCLID-BEFORE"}  # the last touch's click came after: the first's
    assert "adIdentifiers" not in got[ids[1]] and "userData" in got[ids[1]]  # the e-mail alone
    assert got[ids[2]]["adIdentifiers"] == {"gbraid": "GBRAID-90"}


def test_the_fake_google_refuses_a_click_after_the_conversion_as_google_does(harness):
    h = harness("google")
    cid = h.contact("a@example.com")
    h.server.clicks["GCLID-LATER"] = NOW  # Google knows this click came after the purchase below
    h.purchase(cid, at=NOW - timedelta(hours=2), gclid="GCLID-LATER")  # the event's own (wrong) click id
    report = h.run()
    assert report.failed == 1 and "CONVERSION_PRECEDES_EVENT" in report.errors[0]["reason"]
    assert h.server.problems and h.server.problems.pop().startswith("CONVERSION_PRECEDES_EVENT")


def test_meta_fbc_is_only_a_click_before_the_conversion_within_90_days(harness):
    h = harness("meta")
    bought = NOW - timedelta(days=3)
    after_only, before_and_after, ancient = (h.contact(f"{n}@example.com") for n in ("after", "both", "ancient"))
    touch(h, after_only, "fbclid", "FB-AFTER", bought + timedelta(days=1), "t1")
    first_click = bought - timedelta(days=10)
    touch(h, before_and_after, "fbclid", "FB-BEFORE", first_click, "t2")
    touch(h, before_and_after, "fbclid", "FB-AFTER-2", bought + timedelta(hours=1), "t3")
    touch(h, ancient, "fbclid", "FB-ANCIENT", bought - timedelta(days=91), "t4")
    ids = [h.purchase(c, at=bought) for c in (after_only, before_and_after, ancient)]
    assert h.run().sent == 3
    got = h.server.conversions("1234567890")
    assert "fbc" not in got[ids[0]]["user_data"] and "fbc" not in got[ids[2]]["user_data"]
    assert got[ids[1]]["user_data"]["fbc"] == f"fb.1.{int(first_click.timestamp()) * 1000}.FB-BEFORE"


def test_google_validate_only_is_a_dry_run_the_events_stay_due_for_the_real_run(harness):
    h = harness("google", extra=", validate_only: true")
    ids = h.buyers(2)
    report = h.run()
    assert (report.status, report.validated, report.sent, report.failed) == ("ok", 2, 0, 0)
    assert len(h.server.validated) == 2 and h.held() == set() and h.statuses() == {"pending": 2}
    h.declare()  # validate_only removed: the same destination, now for real
    assert h.run().sent == 2 and h.held() == set(ids)


def test_meta_adds_the_crm_lead_fields_only_for_leads_from_its_own_lead_ads(harness):
    h = harness("meta", extra=', lead_event_source: "HubSpot"')
    lead = h.contact("lead@example.com")
    with h.store.engine.begin() as conn:
        conn.execute(contact_t.update().where(contact_t.c.id == lead)
                     .values(attributes={"meta_lead_id": "123456789012345"}))
    visitor = h.contact("visitor@example.com")
    clicked = utc(2026, 11, 18, 12, 0)
    touch(h, visitor, "fbclid", "IwAR0abc", clicked, "t1")
    from_lead, from_visitor = h.purchase(lead), h.purchase(visitor, value=None)
    assert h.run().sent == 2
    got = h.server.conversions("1234567890")
    crm, web = got[from_lead], got[from_visitor]
    assert crm["user_data"]["lead_id"] == 123456789012345
    assert crm["custom_data"] == {"value": 49.9, "currency": "EUR", "event_source": "crm",
                                  "lead_event_source": "HubSpot"}
    assert "lead_id" not in web["user_data"] and "custom_data" not in web
    assert web["user_data"]["fbc"] == f"fb.1.{int(clicked.timestamp()) * 1000}.IwAR0abc"  # the click's time
    assert crm["event_name"] == "Purchase" and crm["action_source"] == "system_generated"
    assert crm["event_time"] == int((NOW - timedelta(hours=2)).timestamp())  # seconds, not milliseconds
    assert all("access_token" not in r.query for r in h.server.requests)


def test_meta_isolates_refused_events_by_halves_within_a_budget_and_never_for_a_wrong_dataset(harness):
    from tests.fakes.meta import FakeMeta
    h = harness("meta")
    emails = [f"m{i:02d}@example.com" for i in range(40)]
    ids = [h.purchase(h.contact(e)) for e in emails]
    h.server.rejected.add(sha(emails[7]))
    one_bad = h.run()
    assert (one_bad.sent, one_bad.failed, one_bad.requests) == (39, 1, 11)  # 1 + 2 per halving, 5 halvings
    assert h.held() == set(ids) - {ids[7]}
    more = [h.purchase(h.contact(f"n{i:02d}@example.com")) for i in range(40)]
    h.server.rejected.update(sha(f"n{i:02d}@example.com") for i in range(40))  # all refused: the budget stops it
    all_bad = h.run()
    assert all_bad.failed == 41 and all_bad.sent == 0 and all_bad.requests <= 1 + 32 + 1
    assert not set(more) & h.held()
    h.server.rejected.clear()
    h.server.fail_next(1, FakeMeta.unknown_object("1234567890"))
    wrong_dataset = h.run()
    assert (wrong_dataset.failed, wrong_dataset.requests) == (41, 1)
    assert "Unsupported post request" in wrong_dataset.errors[0]["reason"]


def test_linkedin_sends_the_li_fat_id_and_the_versioned_restli_headers(harness):
    h = harness("linkedin")
    cid = h.contact("a@example.com")
    touch(h, cid, "li_fat_id", "df5gf5-gh6t7-ph4j7h", NOW - timedelta(days=3), "t1")
    event = h.purchase(cid)
    assert h.run().sent == 1
    request = h.server.requests[0]
    assert (request.path, request.headers["x-restli-method"], request.headers["x-restli-protocol-version"],
            request.headers["linkedin-version"]) == ("/rest/conversionEvents", "BATCH_CREATE", "2.0.0", "202610")
    (element,) = request.json()["elements"]
    assert element["eventId"] == event
    assert element["conversionHappenedAt"] == int((NOW - timedelta(hours=2)).timestamp()) * 1000  # milliseconds
    assert element["user"]["userIds"] == [{"idType": "SHA256_EMAIL", "idValue": sha("a@example.com")},
                                          {"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID",
                                           "idValue": "df5gf5-gh6t7-ph4j7h"}]
    with h.store.engine.connect() as conn:
        assert conn.execute(select(conversion_delivery_t.c.request_id)).scalar_one() == "li-request-1"


def test_the_csv_fallback_writes_hashed_rows_and_no_formula_under_the_data_dir(harness):
    h = harness("csv")
    cid = h.contact("Jane.Doe@Example.com", phone="+49 30 1234567", first_name="Jane")
    event = h.purchase(cid, gclid="=HYPERLINK(\"http://evil\")", wbraid="WB-1")
    assert h.run().sent == 1
    (path,) = h.server.files()
    assert path.parent == h.data_dir / "conversions" / "won_deals"
    text = path.read_text()
    assert "jane" not in text.lower() and "1234567" not in text and "HYPERLINK" not in text
    (row,) = [r for _, r in h.server.received_events]
    assert (row["event_id"], row["email"], row["phone"], row["fn"], row["value"], row["currency"], row["wbraid"]) == \
        (event, sha("jane.doe@example.com"), sha("49301234567"), sha("jane"), "49.90", "EUR", "WB-1")


# ---------------------------------------------------------------- operators: the CLI and the flow


def nurture(root: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NURTURE_DEBUG", "NURTURE_META_ACCESS_TOKEN")}
    env.update({"NURTURE_PROJECT": str(root), "NURTURE_DATA_DIR": str(root / ".nurture"),
                "NURTURE_DATABASE_URL": f"sqlite:///{root / '.nurture' / 'nurture.db'}", "COLUMNS": "200",
                "NURTURE_SYNC_MAX_ATTEMPTS": "1", **env_extra})
    proc = subprocess.run([sys.executable, "-c", "from nurture.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def shop(tmp_path: Path, conversions: str, now: datetime = NOW) -> Path:
    root = write_project(tmp_path / "shop", {})
    (root / "journeys" / "conversions.yaml").write_text(textwrap.dedent(conversions).lstrip())
    store = open_store(f"sqlite:///{root / '.nurture' / 'nurture.db'}")
    with store.engine.begin() as conn:
        for i, ads in enumerate(("granted", "granted", None)):
            cid = conn.execute(contact_t.insert().values(
                email=f"c{i}@example.com", lifecycle_stage="lead", score=0.0, attributes={},
                created_at=now - timedelta(days=9), updated_at=now - timedelta(days=9))).inserted_primary_key[0]
            if ads:
                record_consent(conn, cid, "ads", ads, source="test", at=now - timedelta(days=9))
            conn.execute(event_t.insert().values(event_id=f"o{i}", contact_id=cid, name="purchase",
                                                 properties={"value": 10 + i}, occurred_at=now - timedelta(days=1),
                                                 received_at=now - timedelta(days=1)))
    store.dispose()
    return root


def test_nurture_conversions_exits_0_when_only_skips_happened_and_1_when_something_failed(tmp_path):
    # Dated today: a platform judges an event's age by the real clock, whatever --now says.
    today = datetime.now(timezone.utc).replace(microsecond=0)
    root = shop(tmp_path, """
        conversions:
          - event: purchase
            destinations:
              - {destination: csv, name: buys}
        """, now=today)
    proc = nurture(root, "conversions", "--now", today.isoformat())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "csv:buys" in proc.stdout and "skipped no_ads_consent 1" in proc.stdout
    assert len(list((root / ".nurture" / "conversions" / "buys").glob("*.csv"))) == 1
    (root / "journeys" / "conversions.yaml").write_text(textwrap.dedent("""
        conversions:
          - event: purchase
            destinations:
              - {destination: csv, name: buys}
              - {destination: meta, dataset_id: "1234567890"}
        """))
    proc = nurture(root, "conversions", "--now", today.isoformat())
    assert proc.returncode == 1
    assert "NURTURE_META_ACCESS_TOKEN" in proc.stdout and "the next run retries it" in proc.stderr
    again = nurture(root, "conversions", "--now", today.isoformat(), NURTURE_META_ACCESS_TOKEN=TOKEN,
                    NURTURE_META_BASE_URL="http://127.0.0.1:9")  # refuses at once
    assert again.returncode == 1 and "ConnectError talking to meta" in again.stdout
    assert TOKEN not in again.stdout + again.stderr


def test_nurture_conversions_refuses_an_invalid_file_with_its_locations(tmp_path):
    root = shop(tmp_path, """
        conversions:
          - event: purchase
            destinations:
              - {destination: linkedn, conversion_rule: "urn:lla:llaPartnerConversion:1"}
        """)
    proc = nurture(root, "conversions")
    assert proc.returncode == 1
    assert "journeys/conversions.yaml:4:23: unknown conversions destination 'linkedn' (did you mean 'linkedin'?)" \
        in proc.stderr
    assert "nothing was sent" in proc.stderr


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_the_nightly_segment_sync_flow_sends_the_conversions_and_leaves_their_table(tmp_path, monkeypatch,
                                                                                   prefect_harness):
    import anyio
    from prefect import get_client

    from flows.runtime import forget_runtimes
    from flows.segment_sync import segment_sync
    root = shop(tmp_path, """
        conversions:
          - event: purchase
            destinations:
              - {destination: csv, name: buys}
        """)
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{root / '.nurture' / 'nurture.db'}")
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    try:
        state = segment_sync(project=str(root), now=NOW, return_state=True)
        rows = state.result()

        async def inspect():  # the worker's Prefect server is shared: this run's artifacts only
            async with get_client() as client:
                return await client.read_artifacts()
        artifacts = [a for a in anyio.run(inspect) if a.flow_run_id == state.state_details.flow_run_id]
    finally:
        forget_runtimes()
    assert rows == []  # no segments: the flow's own result is unchanged
    (table,) = [a for a in artifacts if a.key == "conversions"]
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [(r["target"], r["status"], r["sent"], r["skipped"]) for r in data] == [("csv:buys", "ok", 2, 1)]
    assert not math.isnan(float(data[0]["duration_ms"]))
