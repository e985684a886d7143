"""Specification: deals in from HubSpot (issue 13, item 1) — `nurture crm pull`, the `crm-pull`
flow and the HubSpot webhook — against a fake HubSpot on 127.0.0.1 that speaks the documented
search, associations v4 and batch-read protocols, on SQLite and PostgreSQL.

A pull stores every changed deal and its stage changes as events of the deal's first known
contact (its revenue counts once), each event once however often the deal is read; deals of
unknown people are counted and named, erased people never come back; the cursor moves only
with a committed batch, so a failure mid-pull loses and doubles nothing."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from integrations.http_retry import RetryPolicy
from integrations.hubspot import HubSpotDeals
from nurture.crm.deals import CrmContact, DealSnapshot, apply_deals
from nurture.crm.pull import SEARCH_LAG, pull_deals
from nurture.privacy.tombstones import ERASED_REASON, subject_hash
from nurture.store.tables import contact_t, crm_cursor_t, deal_t, event_t, suppression_t
from nurture.web.privacy import hubspot_signature_v3
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event, contact_row, journey_yaml, subscriber
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot, millis
from tests.test_ingest_concurrency import in_transaction, race

NOW = utc(2026, 3, 4, 10, 0)
TOKEN = "pat-na1-test-token-0001"
DAY = timedelta(days=1)
SEARCH = "/crm/v3/objects/deals/search"


@pytest.fixture
def hubspot():
    fake = FakeHubSpot(TOKEN).start()
    yield fake
    fake.stop()


def source(fake: FakeHubSpot, *, page: int = 200, batch: int = 1000, waits: list | None = None,
           attempts: int = 3, **kwargs) -> HubSpotDeals:
    policy = RetryPolicy(max_attempts=attempts, sleep=(waits if waits is not None else []).append)
    return HubSpotDeals(TOKEN, fake.url, policy, page_size=page, batch_size=batch,
                        search_interval=kwargs.pop("search_interval", 0), **kwargs)


def pull(store, fake, now=NOW, *, page: int = 200, batch: int = 1000, waits: list | None = None, **kwargs):
    deals = source(fake, page=page, batch=batch, waits=waits)
    try:
        return pull_deals(store, deals, now=now, currency="EUR", **kwargs)
    finally:
        deals.close()


def read(store, *columns, where=None):
    with store.engine.connect() as conn:
        stmt = select(*columns)
        if where is not None:
            stmt = stmt.where(where)
        rows = conn.execute(stmt).all()
        conn.rollback()
    return rows


def deal_events(store):
    """(event id, contact id, name, properties, occurred_at) of the deal events, in order."""
    return [tuple(r) for r in read(store, event_t.c.event_id, event_t.c.contact_id, event_t.c.name,
                                   event_t.c.properties, event_t.c.occurred_at,
                                   where=event_t.c.name.like("deal_%"))]


def deal_rows(store):
    return {r.deal_id: r for r in read(store, deal_t)}


def cursor(store):
    rows = read(store, crm_cursor_t.c.modified_at, crm_cursor_t.c.deal_id)
    return tuple(rows[0]) if rows else None


def searches(fake) -> list[dict]:
    return [r.json() for r in fake.requests if r.path == SEARCH]


# ---------------------------------------------------------------- deals and their events


def test_a_pull_stores_each_deal_and_its_events_on_its_contact(store, hubspot):
    ann = add_contact(store, "ann@example.com")
    hubspot.put_deal("101", stage="appointmentscheduled", modified=NOW - 2 * DAY, created=NOW - 3 * DAY,
                     contacts=("Ann@Example.com",), amount="1200.50", currency="EUR", name="Ann's\r\nsubscription")
    result = pull(store, hubspot)
    assert (result.deals.read, result.deals.new, result.deals.events, result.failure) == (1, 1, 1, None)
    [(eid, contact, name, props, at)] = deal_events(store)
    assert (eid, contact, name, at) == ("deal:hubspot:101:created", ann, "deal_created", NOW - 3 * DAY)
    assert props == {"deal_id": "101", "crm": "hubspot", "pipeline": "default", "name": "Ann's subscription",
                     "stage": "appointmentscheduled", "amount": 1200.5, "currency": "EUR"}
    row = deal_rows(store)["101"]
    assert (row.contact_id, row.email, row.stage, row.outcome, row.amount, row.currency) == \
        (ann, "ann@example.com", "appointmentscheduled", "open", 1200.5, "EUR")
    assert contact_row(store, ann).lifecycle_stage == "opportunity"  # an open deal: at least an opportunity
    # what HubSpot was asked: bearer auth, the documented shapes, nothing else
    assert hubspot.problems == []
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hubspot.requests)
    [search] = searches(hubspot)
    assert search["sorts"] == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]
    assert search["limit"] == 200 and "after" not in search
    assert {"dealstage", "amount", "closedate", "hs_lastmodifieddate"} <= set(search["properties"])
    assert [r.path for r in hubspot.requests] == [SEARCH, "/crm/v4/associations/deals/contacts/batch/read",
                                                  "/crm/v3/objects/contacts/batch/read"]


def test_reading_the_same_deals_again_adds_nothing(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("101", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, contacts=("ann@example.com",),
                     amount="900")
    first = pull(store, hubspot)
    events = deal_events(store)
    again = pull(store, hubspot, since=NOW - 30 * DAY)  # everything read once more
    assert (first.deals.events, again.deals.read, again.deals.events, again.deals.won) == (2, 1, 0, 0)
    assert deal_events(store) == events
    assert read(store, func.count(), where=event_t.c.name == "lifecycle_stage_changed")[0][0] == 1


def test_a_new_stage_is_one_deal_stage_changed_event_from_the_stored_stage(store, hubspot):
    ann = add_contact(store, "ann@example.com")
    hubspot.put_deal("7", stage="qualifiedtobuy", modified=NOW - 2 * DAY, contacts=("ann@example.com",), amount="80")
    pull(store, hubspot)
    hubspot.put_deal("7", stage="contractsent", modified=NOW - DAY, contacts=("ann@example.com",), amount="95")
    result = pull(store, hubspot)
    assert (result.deals.changed, result.deals.stage_changes) == (1, 1)
    changed = [e for e in deal_events(store) if e[2] == "deal_stage_changed"]
    assert changed == [("deal:hubspot:7:stage:contractsent", ann, "deal_stage_changed",
                        {"deal_id": "7", "crm": "hubspot", "pipeline": "default", "from": "qualifiedtobuy",
                         "to": "contractsent", "amount": 95.0}, NOW - DAY)]
    assert deal_rows(store)["7"].stage == "contractsent"


def test_a_won_deal_is_deal_won_with_its_amount_as_value_at_its_close_date_and_makes_a_customer(store, hubspot):
    ann = add_contact(store, "ann@example.com", lifecycle_stage="sql")
    hubspot.put_deal("9", stage="contractsent", modified=NOW - 3 * DAY, contacts=("ann@example.com",), amount="4200")
    pull(store, hubspot)
    closed = NOW - 2 * DAY
    hubspot.put_deal("9", stage="closedwon", modified=NOW - DAY, closed=closed, contacts=("ann@example.com",),
                     amount="4200", currency="EUR")
    result = pull(store, hubspot)
    assert (result.deals.won, result.deals.revenue, result.deals.stage_changes) == (1, 4200.0, 1)
    won = [e for e in deal_events(store) if e[2] == "deal_won"]
    assert won == [("deal:hubspot:9:won", ann, "deal_won",
                    {"deal_id": "9", "crm": "hubspot", "pipeline": "default", "name": "Deal 9", "amount": 4200.0,
                     "currency": "EUR", "value": 4200.0}, closed)]
    assert contact_row(store, ann).lifecycle_stage == "customer"
    [(props, at)] = read(store, event_t.c.properties, event_t.c.occurred_at,
                         where=event_t.c.event_id == f"lifecycle:{ann}:customer")
    assert (props, at) == ({"from": "opportunity", "to": "customer", "source": "crm:hubspot"}, closed)


def test_a_lost_deal_is_deal_lost_and_moves_no_stage(store, hubspot):
    ann = add_contact(store, "ann@example.com", lifecycle_stage="sql")
    hubspot.put_deal("5", stage="closedlost", modified=NOW - DAY, closed=NOW - DAY, contacts=("ann@example.com",),
                     amount="300")
    result = pull(store, hubspot)
    assert (result.deals.lost, result.deals.won, result.deals.revenue) == (1, 0, 0.0)
    assert [e[2] for e in deal_events(store)] == ["deal_created", "deal_lost"]
    assert contact_row(store, ann).lifecycle_stage == "sql"


def test_a_deals_revenue_counts_once_on_its_first_associated_contact_nurture_knows(store, hubspot):
    ann, bob = add_contact(store, "ann@example.com"), add_contact(store, "bob@example.com")
    hubspot.put_deal("11", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="1000",
                     contacts=("stranger@example.com", "ann@example.com", "bob@example.com"))
    result = pull(store, hubspot)
    assert (result.deals.won, result.deals.revenue, result.deals.without_contact) == (1, 1000.0, 0)
    assert {e[1] for e in deal_events(store)} == {ann}
    assert deal_rows(store)["11"].contact_id == ann
    assert contact_row(store, bob).lifecycle_stage == "lead"
    # HubSpot lists the contacts in another order later: the deal keeps its contact
    hubspot.put_deal("11", stage="closedwon", modified=NOW - DAY / 2, closed=NOW - DAY, amount="1000",
                     contacts=("bob@example.com", "ann@example.com"))
    pull(store, hubspot)
    assert deal_rows(store)["11"].contact_id == ann and {e[1] for e in deal_events(store)} == {ann}


def test_a_deal_of_unknown_people_is_kept_counted_and_named_and_gets_its_contact_when_it_appears(store, hubspot):
    hubspot.put_deal("21", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="700",
                     contacts=("zoe@example.com",))
    hubspot.put_deal("22", stage="presentationscheduled", modified=NOW - DAY)  # no contact at all
    result = pull(store, hubspot)
    assert (result.deals.read, result.deals.without_contact, result.deals.events) == (2, 2, 0)
    assert sorted(result.deals.examples) == [("21", "zoe@example.com"), ("22", None)]
    assert read(store, contact_t.c.id) == []  # no contact is created from the CRM
    assert (deal_rows(store)["21"].contact_id, deal_rows(store)["21"].email) == (None, "zoe@example.com")
    zoe = add_contact(store, "zoe@example.com")  # imported later
    later = pull(store, hubspot)  # the deal itself did not change
    assert (later.deals.attached, later.deals.won, later.deals.revenue) == (1, 1, 700.0)
    assert deal_rows(store)["21"].contact_id == zoe
    assert [(e[1], e[2]) for e in deal_events(store)] == [(zoe, "deal_created"), (zoe, "deal_won")]
    assert pull(store, hubspot).deals.events == 0


def test_an_erased_person_is_never_matched_stored_or_named(store, hubspot):
    with store.engine.begin() as conn:  # what an erasure leaves: the hash of the address
        conn.execute(suppression_t.insert().values(address=subject_hash("eve@example.com"), reason=ERASED_REASON,
                                                   created_at=NOW - 9 * DAY))
    hubspot.put_deal("31", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="50",
                     contacts=("eve@example.com",))
    result = pull(store, hubspot)
    assert (result.deals.erased, result.deals.without_contact, result.deals.examples) == (1, 0, [])
    row = deal_rows(store)["31"]
    assert (row.contact_id, row.email) == (None, None)
    assert read(store, contact_t.c.id) == [] and deal_events(store) == []


def test_hubspot_lifecycle_stages_move_nurture_forward_only(store, hubspot):
    ann = add_contact(store, "ann@example.com", lifecycle_stage="sql")
    cat = add_contact(store, "cat@example.com")
    dan = add_contact(store, "dan@example.com")
    hubspot.add_contact("ann@example.com", "marketingqualifiedlead")  # behind Nurture: ignored
    hubspot.add_contact("cat@example.com", "salesqualifiedlead", stage_date=NOW - 5 * DAY)
    hubspot.add_contact("dan@example.com", "other")  # says nothing about Nurture's order
    hubspot.put_deal("41", stage="closedlost", modified=NOW - DAY, closed=NOW - DAY,
                     contacts=("ann@example.com", "cat@example.com", "dan@example.com"))
    result = pull(store, hubspot)
    stages = {cid: contact_row(store, cid).lifecycle_stage for cid in (ann, cat, dan)}
    assert stages == {ann: "sql", cat: "sql", dan: "lead"}
    assert result.deals.lifecycle == {"sql": 1}
    [(props, at)] = read(store, event_t.c.properties, event_t.c.occurred_at,
                         where=event_t.c.event_id == f"lifecycle:{cat}:sql")
    assert (props["from"], props["to"], at) == ("lead", "sql", NOW - 5 * DAY)
    hubspot.add_contact("cat@example.com", "evangelist")  # HubSpot's evangelist is Nurture's customer
    hubspot.put_deal("41", stage="closedlost", modified=NOW - DAY / 2, closed=NOW - DAY,
                     contacts=("ann@example.com", "cat@example.com"))
    pull(store, hubspot)
    assert contact_row(store, cat).lifecycle_stage == "customer"


def test_a_won_deal_in_another_currency_keeps_its_amount_but_brings_no_revenue(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("51", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="300", currency="USD",
                     contacts=("ann@example.com",))
    result = pull(store, hubspot)
    assert (result.deals.won, result.deals.revenue, result.deals.other_currency) == (1, 0.0, 1)
    [props] = [e[3] for e in deal_events(store) if e[2] == "deal_won"]
    assert "value" not in props and (props["amount"], props["currency"]) == (300.0, "USD")


def test_nothing_a_crm_says_is_trusted(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("61", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="NaN",
                     contacts=("ann@example.com",), name="x" * 5000)
    hubspot.put_deal("62", stage="s" * 500, modified=NOW - DAY, contacts=("ann@example.com",))
    hubspot.put_deal("63", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="1e300",
                     contacts=("ann@example.com",))
    result = pull(store, hubspot)
    assert sorted(deal_rows(store)) == ["61", "63"]
    assert any("deal 62: stage is longer than 100 characters" in p for p in result.deals.problems)
    assert any("deal 61: amount 'NaN' is not an amount" in p for p in result.deals.problems)
    rows = deal_rows(store)
    assert rows["61"].amount is None and len(rows["61"].name) == 200 and rows["63"].amount is None
    # the engine refuses what no integration should hand over, deal by deal
    with store.engine.begin() as conn:
        engine = apply_deals(conn, "test", [
            DealSnapshot("1", "open-stage", "open", NOW, (CrmContact("ann@example.com"),), amount=float("inf")),
            DealSnapshot("2\x00", "open-stage", "open", NOW),
            DealSnapshot("3", "open-stage", "open", NOW, (CrmContact("not an address"),), amount=-5.0),
            DealSnapshot("4", "open-stage", "open", NOW, (CrmContact("ann@example.com"),), amount=10.0)],
            now=NOW, currency="EUR")
    assert engine.new == 1 and len(engine.problems) == 3


# ---------------------------------------------------------------- reading what changed, and only that


def test_the_first_pull_reads_the_last_90_days_and_each_later_pull_from_its_cursor(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("1", stage="s1", modified=NOW - 100 * DAY, contacts=("ann@example.com",))
    hubspot.put_deal("2", stage="s1", modified=NOW - 80 * DAY, contacts=("ann@example.com",))
    first = pull(store, hubspot)
    assert sorted(deal_rows(store)) == ["2"]
    assert searches(hubspot)[0]["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(millis(NOW - 90 * DAY))},
        {"propertyName": "hs_lastmodifieddate", "operator": "LTE", "value": str(millis(NOW))}]}]
    assert cursor(store) == (NOW - 80 * DAY, "2") and first.cursor_after == NOW - 80 * DAY
    hubspot.requests.clear()
    pull(store, hubspot, NOW + DAY)
    assert searches(hubspot)[0]["filterGroups"][0]["filters"][0]["value"] == str(millis(NOW - 80 * DAY - SEARCH_LAG))
    pull(store, hubspot, NOW + DAY, lookback=timedelta(days=365))  # the lookback is for the first pull only
    assert sorted(deal_rows(store)) == ["2"]
    older = pull(store, hubspot, NOW + DAY, since=NOW - 120 * DAY)
    assert sorted(deal_rows(store)) == ["1", "2"] and older.cursor_after == NOW - 80 * DAY


def test_a_pull_with_nothing_new_costs_a_few_requests_whatever_the_crm_holds(store, hubspot):
    add_contact(store, "ann@example.com")
    for i in range(40):
        hubspot.put_deal(str(100 + i), stage="s1", modified=NOW - DAY * (40 - i) / 10, contacts=("ann@example.com",))
    first = pull(store, hubspot, page=10, batch=20)
    # 4 full pages and one that finds nothing new; per batch of 20 one associations and one contacts read
    assert (first.deals.read, first.batches, first.requests) == (40, 2, 5 + 2 * 2)
    again = pull(store, hubspot, page=10, batch=20)
    assert again.requests <= 3 and again.deals.events == 0


def test_more_deals_than_the_search_returns_per_query_are_read_by_restarting_at_the_last_modification(
        store, hubspot):
    hubspot.search_cap = 25  # HubSpot's 10,000, scaled down
    add_contact(store, "ann@example.com")
    for i in range(60):
        hubspot.put_deal(str(1000 + i), stage="s1", modified=NOW - timedelta(minutes=600 - 7 * i),
                         contacts=("ann@example.com",))
    result = pull(store, hubspot, page=10, batch=10)
    assert (result.deals.read, result.deals.new, result.failure) == (60, 60, None)
    assert len(deal_rows(store)) == 60 and hubspot.problems == []
    assert all("after" not in s for s in searches(hubspot))  # never an offset: nothing to hit the cap with
    assert read(store, func.count(), where=event_t.c.name == "deal_created")[0][0] == 60


def test_a_bulk_edit_in_one_millisecond_larger_than_a_page_is_read_by_record_id(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("5", stage="s1", modified=NOW - 2 * DAY, contacts=("ann@example.com",))
    for i in range(35):  # an import in HubSpot: 35 deals written in the same millisecond
        hubspot.put_deal(str(200 + i), stage="s1", modified=NOW - DAY, contacts=("ann@example.com",))
    hubspot.put_deal("900", stage="s1", modified=NOW - DAY / 2, contacts=("ann@example.com",))
    result = pull(store, hubspot, page=10, batch=1)  # a batch per deal: a deal read twice would count twice
    assert (result.deals.read, result.deals.new, len(deal_rows(store))) == (37, 37, 37)  # each read once
    by_id = [s for s in searches(hubspot) if s["sorts"][0]["propertyName"] == "hs_object_id"]
    assert by_id and by_id[0]["filterGroups"][0]["filters"][0] == {
        "propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": str(millis(NOW - DAY))}
    assert cursor(store)[0] == NOW - DAY / 2


def test_a_search_that_answers_the_same_instant_again_ends_the_pull_with_a_failure(store, hubspot):
    """A full page of deals of one instant, answered again after it was read by record id
    (a search that ignores its filters): the pull went round for ever."""
    add_contact(store, "ann@example.com")
    for i in range(12):
        hubspot.put_deal(str(300 + i), stage="s1", modified=NOW - DAY, contacts=("ann@example.com",))
    hubspot.search_ignores_filters = True
    result = pull(store, hubspot, page=10, batch=100)
    assert result.failure and "outside the time asked for" in result.failure
    assert len(searches(hubspot)) < 10


@pytest.mark.parametrize("reply", [Reply(200, {"status": "error", "message": "try again"}), Reply(200, ["a list"]),
                                   Reply(200, {"results": None}), Reply(200, "not json")])
def test_a_search_answer_without_results_is_a_failure_not_the_end_of_the_deals(store, hubspot, reply):
    """A 200 without a list of results read as "no more deals": `deals read: 0`, exit 0."""
    hubspot.put_deal("5", stage="s1", modified=NOW - DAY)
    hubspot.fail_next(1, reply)
    result = pull(store, hubspot)
    assert result.failure and "HubSpot's" in result.failure and cursor(store) is None


def test_a_429_is_waited_out_as_hubspot_says_and_searches_are_paced_at_five_per_second(store, hubspot):
    add_contact(store, "ann@example.com")
    for i in range(30):
        hubspot.put_deal(str(300 + i), stage="s1", modified=NOW - timedelta(hours=30 - i),
                         contacts=("ann@example.com",))
    hubspot.rate_limit_searches = 2
    waits: list[float] = []
    result = pull(store, hubspot, page=10, waits=waits)
    assert (result.deals.read, result.failure, waits) == (30, None, [1.0, 1.0])  # Retry-After: 1
    assert len(searches(hubspot)) == 2 + 4
    clock = {"t": 0.0}
    paced: list[float] = []

    def sleep(seconds: float) -> None:
        paced.append(seconds)
        clock["t"] += seconds
    deals = source(hubspot, page=10, search_interval=0.2, clock=lambda: clock["t"], sleep=sleep)
    pull_deals(store, deals, now=NOW, currency="EUR", since=NOW - 2 * DAY)
    assert paced == [pytest.approx(0.2)] * 3  # four searches, 0.2 s apart


def test_a_failure_mid_pull_loses_nothing_and_the_next_pull_doubles_nothing(store, hubspot):
    add_contact(store, "ann@example.com")
    for i in range(30):
        hubspot.put_deal(str(400 + i), stage="closedwon", modified=NOW - timedelta(hours=40 - i),
                         closed=NOW - timedelta(hours=40 - i), amount="10", contacts=("ann@example.com",))
    hubspot.down_after_searches = 2  # HubSpot answers 503 from the second page's contacts on
    failed = pull(store, hubspot, page=10, batch=10)
    assert failed.failure and "503" in failed.failure and failed.deals.read == 10
    assert cursor(store) == (NOW - timedelta(hours=31), "409")
    assert len(deal_rows(store)) == 10
    hubspot.down_after_searches = None
    resumed = pull(store, hubspot, page=10, batch=10)
    assert resumed.failure is None and len(deal_rows(store)) == 30
    assert (failed.deals.won + resumed.deals.won, failed.deals.revenue + resumed.deals.revenue) == (30, 300.0)
    counts = dict(read_grouped(store))
    assert counts == {"deal_created": 30, "deal_won": 30}


def read_grouped(store):
    with store.engine.connect() as conn:
        rows = conn.execute(select(event_t.c.name, func.count()).where(event_t.c.name.like("deal_%"))
                            .group_by(event_t.c.name)).all()
        conn.rollback()
    return rows


def test_a_crash_before_the_batch_commits_leaves_neither_its_deals_nor_its_events_nor_the_cursor(
        store, hubspot, monkeypatch):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("71", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="10",
                     contacts=("ann@example.com",))
    import nurture.crm.pull as pull_module

    def crash(*args, **kwargs):
        raise RuntimeError("the process died here")
    monkeypatch.setattr(pull_module, "save_cursor", crash)
    with pytest.raises(RuntimeError):
        pull(store, hubspot)
    assert (deal_rows(store), deal_events(store), cursor(store)) == ({}, [], None)
    monkeypatch.undo()
    assert pull(store, hubspot).deals.won == 1 and len(deal_events(store)) == 2


# ---------------------------------------------------------------- revenue in the report


def test_a_journey_with_a_deal_won_goal_gets_the_deal_amount_as_revenue(make_runtime, store, hubspot):
    from nurture.reporting import build_report
    from nurture.runtime import run_tick
    rt = make_runtime({"b2b": journey_yaml("b2b", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}",
                                           extra="goal: {event: deal_won, within: 90d}")})
    ann = subscriber(rt.store, "ann@example.com")
    add_event(rt.store, ann, "signup", NOW - 10 * DAY)
    run_tick(rt, "b2b", NOW - 10 * DAY + timedelta(minutes=5))
    hubspot.put_deal("81", stage="closedwon", modified=NOW - DAY, closed=NOW - 2 * DAY, amount="4200",
                     currency="EUR", contacts=("ann@example.com",))
    pull(rt.store, hubspot)
    run_tick(rt, "b2b", NOW)
    report = build_report(rt.store, rt.project, NOW).journey("b2b")
    assert (report.converted, report.revenue) == (1, 4200.0)


# ---------------------------------------------------------------- the webhook: one deal now


def _signed(site, body: bytes, secret: str) -> dict[str, str]:
    ts = str(int(site.clock["now"].timestamp() * 1000))
    return {"X-HubSpot-Signature-v3": hubspot_signature_v3(secret, "POST", site.url + "/webhooks/hubspot", body, ts),
            "X-HubSpot-Request-Timestamp": ts, "Content-Type": "application/json"}


def test_the_hubspot_webhook_pulls_a_changed_deal_at_once(make_runtime, hubspot):
    from tests.test_web_site import running_site
    secret = "hubspot-app-client-secret-1"
    rt = make_runtime({})
    ann = add_contact(rt.store, "ann@example.com")
    hubspot.put_deal("91", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="250",
                     contacts=("ann@example.com",))
    with running_site(rt, NOW, NURTURE_HUBSPOT_CLIENT_SECRET=secret, NURTURE_HUBSPOT_TOKEN=TOKEN,
                      NURTURE_HUBSPOT_BASE_URL=hubspot.url, NURTURE_SYNC_MAX_ATTEMPTS="1") as site:
        body = json.dumps([{"eventId": 1, "subscriptionId": 9, "portalId": 62515, "occurredAt": 1772532000000,
                            "subscriptionType": "deal.propertyChange", "propertyName": "dealstage",
                            "propertyValue": "closedwon", "objectId": 91},
                           {"eventId": 2, "subscriptionType": "deal.propertyChange", "objectId": 91,
                            "propertyName": "amount"}]).encode()
        assert site.http.post("/webhooks/hubspot", content=body).status_code == 401
        answer = site.http.post("/webhooks/hubspot", content=body, headers=_signed(site, body, secret))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"erased": 0, "already_erased": 0, "unknown": 0, "ignored": 0,
                                 "deals": {"named": 1, "read": 1, "events": 2, "won": 1, "failure": None}}
        assert [(e[1], e[2]) for e in deal_events(rt.store)] == [(ann, "deal_created"), (ann, "deal_won")]
        assert hubspot.count("/crm/v3/objects/deals/91") == 1 and hubspot.count(SEARCH) == 0
        assert cursor(rt.store) is None  # the hourly pull's cursor is its own
        bad = json.dumps([{"subscriptionType": "deal.creation", "objectId": "91; DROP"}]).encode()
        refused = site.http.post("/webhooks/hubspot", content=bad, headers=_signed(site, bad, secret))
        assert (refused.status_code, refused.json()["field"]) == (422, "[0].objectId")
        gone = json.dumps([{"subscriptionType": "deal.creation", "objectId": 404404}]).encode()
        assert site.http.post("/webhooks/hubspot", content=gone,
                              headers=_signed(site, gone, secret)).json()["deals"]["read"] == 0
        rt.env.pop("NURTURE_HUBSPOT_TOKEN")
    with running_site(rt, NOW, NURTURE_HUBSPOT_CLIENT_SECRET=secret) as site:
        answer = site.http.post("/webhooks/hubspot", content=body, headers=_signed(site, body, secret))
        assert answer.status_code == 200 and "NURTURE_HUBSPOT_TOKEN" in answer.json()["deals"]["failure"]


# ---------------------------------------------------------------- the command


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, hubspot):
    """`nurture …` in this process (main(), as the console script runs it): (exit code, stdout, stderr)."""
    from nurture.cli import main
    root = write_project(tmp_path / "shop", {}, policies='version: "1"\ncurrency: EUR\n')
    for name, value in {"NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{root / 'cli.db'}",
                        "NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_HUBSPOT_TOKEN": TOKEN,
                        "NURTURE_HUBSPOT_BASE_URL": hubspot.url, "NURTURE_SYNC_MAX_ATTEMPTS": "1",
                        "COLUMNS": "300"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NURTURE_DEBUG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nurture", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, out + err
        return exit_.value.code or 0, out, err
    run.root = root
    return run


def test_nurture_crm_pull_prints_what_it_did(cli, hubspot):
    from nurture.store.db import open_store
    store = open_store(f"sqlite:///{cli.root / 'cli.db'}")
    add_contact(store, "ann@example.com")
    store.dispose()
    hubspot.put_deal("1", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="1500",
                     contacts=("ann@example.com",))
    hubspot.put_deal("2", stage="qualifiedtobuy", modified=NOW - DAY, contacts=("zoe@example.com",))
    code, out, err = cli("crm", "pull", "--now", NOW.isoformat())
    assert (code, err) == (0, ""), out + err
    assert out.splitlines() == [
        "crm pull hubspot: changes from 2025-12-04 10:00 to 2026-03-04 10:00 UTC",
        "  deals read: 2 (2 new, 0 changed)",
        "  events added: 2 (0 stage change(s), 1 won, 0 lost)",
        "  revenue of the deals won: 1,500.00 EUR (each deal once, on its first known contact)",
        "  deals without a known contact: 1 (kept, no events), e.g. 2 (zoe@example.com); import those contacts "
        "and the next pull attaches them",
        "  lifecycle: 1 to customer",
        "  requests: 3 (1500.0 per 1,000 deals); cursor: 2026-03-03T10:00:00+00:00"]
    code, out, _ = cli("crm", "pull", "--now", NOW.isoformat(), "--json")
    assert code == 0 and json.loads(out)["events"] == 0


def test_nurture_crm_pull_says_why_when_hubspot_refuses_or_cannot_be_reached_and_keeps_the_cursor(
        cli, hubspot, monkeypatch):
    hubspot.put_deal("1", stage="s1", modified=NOW - DAY)
    monkeypatch.setenv("NURTURE_HUBSPOT_TOKEN", "pat-na1-wrong-token-9999")
    code, out, err = cli("crm", "pull", "--now", NOW.isoformat())
    assert code == 1 and "HubSpot refused the token (HTTP 401)" in err and "set NURTURE_HUBSPOT_TOKEN" in err
    assert "pat-na1-wrong-token-9999" not in out + err and "no cursor yet" in err
    monkeypatch.setenv("NURTURE_HUBSPOT_TOKEN", TOKEN)
    monkeypatch.setenv("NURTURE_HUBSPOT_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = cli("crm", "pull", "--now", NOW.isoformat())
    assert code == 1 and "cannot reach HubSpot at http://127.0.0.1:9" in err
    monkeypatch.delenv("NURTURE_HUBSPOT_TOKEN")
    code, _, err = cli("crm", "pull")
    assert code == 1 and "set NURTURE_HUBSPOT_TOKEN" in err
    code, _, err = cli("crm", "pull", "--since", "yesterday")
    assert code == 2 and "--since: 'yesterday' is not an ISO 8601 timestamp" in err
    from nurture.store.db import open_store
    store = open_store(f"sqlite:///{cli.root / 'cli.db'}")
    assert cursor(store) is None and deal_rows(store) == {}
    store.dispose()


# ---------------------------------------------------------------- the flow


def test_the_crm_pull_flows_task_pulls_and_a_project_without_hubspot_is_not_a_failure(tmp_path, monkeypatch,
                                                                                       hubspot):
    """The task the hourly flow runs (without Prefect: `.fn`); the flow around it only writes
    the artifact and fails the run on `failure` (tests/test_deployments.py loads it as a flow)."""
    import flows.crm_pull as crm_flow
    from flows.runtime import forget_runtimes
    root = write_project(tmp_path / "shop", {})
    for name, value in {"NURTURE_DATABASE_URL": f"sqlite:///{root / 'flow.db'}",
                        "NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_HUBSPOT_TOKEN": TOKEN,
                        "NURTURE_HUBSPOT_BASE_URL": hubspot.url, "NURTURE_SYNC_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(crm_flow, "with_secret_blocks", lambda env, crm: dict(env))  # no Prefect server here
    hubspot.put_deal("1", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="99",
                     contacts=("ann@example.com",))
    try:
        row = crm_flow.pull_task.fn(str(root), NOW, 90, "hubspot")
        assert (row["status"], row["deals_read"], row["without_contact"], row["failure"]) == ("pulled", 1, 1, "")
        assert row["examples"] == "1 (ann@example.com)"
        forget_runtimes()
        monkeypatch.setenv("NURTURE_HUBSPOT_TOKEN", "pat-na1-wrong-token-9999")
        refused = crm_flow.pull_task.fn(str(root), NOW, 90, "hubspot")
        assert refused["status"] == "failed" and "HTTP 401" in refused["failure"]
        assert "pat-na1-wrong-token-9999" not in json.dumps(refused)
        forget_runtimes()
        monkeypatch.delenv("NURTURE_HUBSPOT_TOKEN")
        skipped = crm_flow.pull_task.fn(str(root), NOW, 90, "hubspot")
        assert skipped["status"] == "not configured" and "NURTURE_HUBSPOT_TOKEN" in skipped["note"]
    finally:
        forget_runtimes()


def test_an_erasure_removes_the_address_from_the_persons_deals_and_keeps_the_amounts(store, tmp_path):
    """A deal is the company's record (amount, stage) but its address names the person: an
    erasure clears it — on the person's deals and on a deal still waiting for that address."""
    from sqlalchemy import select

    from nurture.privacy.erase import erase_contacts
    from nurture.registry import IntegrationContext
    from nurture.spec.project import load_project
    from nurture.store.tables import deal_t
    from tests.conftest import write_project
    from tests.engine_fixtures import add_contact
    t = datetime(2026, 3, 1, tzinfo=timezone.utc)
    cid = add_contact(store, "jane@firm.example")
    with store.engine.begin() as conn:
        for deal_id, contact, email in (("D-1", cid, "jane@firm.example"), ("D-2", None, "Jane@Firm.example"),
                                        ("D-3", None, "other@firm.example")):
            conn.execute(deal_t.insert().values(crm="import", deal_id=deal_id, contact_id=contact, email=email,
                                                stage="won", outcome="won", amount=1000.0, currency="EUR",
                                                modified_at=t, created_at=t, updated_at=t))
    root = write_project(tmp_path / "p", {})
    project = load_project(root)
    [result] = erase_contacts(store, project, [("jane@firm.example", cid)],
                              context=IntegrationContext(root, root / ".nurture", {}), actor="test", reason="request")
    with store.reading() as conn:
        rows = {r.deal_id: (r.email, r.amount) for r in conn.execute(select(deal_t))}
    assert rows == {"D-1": (None, 1000.0), "D-2": (None, 1000.0), "D-3": ("other@firm.example", 1000.0)}
    assert result.removed["deals"] == 2


def test_a_won_deals_corrected_amount_corrects_its_deal_won_and_the_reports_revenue(store, hubspot, tmp_path):
    """12000 typed for 1200 and fixed the next day in the CRM: the deal_won event (written once,
    under the deal's id) is brought to the deal, so lead-source revenue and CLV read 1200."""
    from nurture.reporting import build_report
    from nurture.spec.project import load_project
    ann = add_contact(store, "ann@example.com", lifecycle_stage="sql")
    closed = NOW - 2 * DAY
    hubspot.put_deal("9", stage="closedwon", modified=NOW - 2 * DAY, closed=closed, contacts=("ann@example.com",),
                     amount="12000", currency="EUR")
    assert pull(store, hubspot).deals.revenue == 12000.0
    hubspot.put_deal("9", stage="closedwon", modified=NOW - DAY, closed=closed, contacts=("ann@example.com",),
                     amount="1200", currency="EUR")
    result = pull(store, hubspot, NOW + timedelta(hours=1))
    # no new event; the stored one corrected: revenue 10,800 lower
    assert (result.deals.events, result.deals.corrected, result.deals.corrected_revenue) == (0, 1, -10800.0)
    assert result.row()["won_corrected"] == 1 and result.row()["revenue_corrected"] == -10800.0
    won = [e for e in deal_events(store) if e[2] == "deal_won"]
    assert won == [("deal:hubspot:9:won", ann, "deal_won",
                    {"deal_id": "9", "crm": "hubspot", "pipeline": "default", "name": "Deal 9", "amount": 1200.0,
                     "currency": "EUR", "value": 1200.0}, closed)]
    assert deal_rows(store)["9"].amount == 1200.0
    report = build_report(store, load_project(write_project(tmp_path / "p", {})), NOW + DAY)
    assert (report.sources_total.revenue, report.kpis.clv) == (1200.0, 1200.0)
    # read once more: nothing left to correct
    assert pull(store, hubspot, NOW + timedelta(hours=2)).deals.corrected == 0


def test_a_won_deal_moved_to_another_currency_loses_its_value(store, hubspot):
    add_contact(store, "ann@example.com")
    hubspot.put_deal("9", stage="closedwon", modified=NOW - 2 * DAY, closed=NOW - 2 * DAY,
                     contacts=("ann@example.com",), amount="500", currency="EUR")
    pull(store, hubspot)
    hubspot.put_deal("9", stage="closedwon", modified=NOW - DAY, closed=NOW - 2 * DAY,
                     contacts=("ann@example.com",), amount="500", currency="USD")
    result = pull(store, hubspot, NOW + timedelta(hours=1))
    assert (result.deals.corrected, result.deals.corrected_revenue) == (1, -500.0)
    [props] = [e[3] for e in deal_events(store) if e[2] == "deal_won"]
    assert (props["amount"], props["currency"], "value" in props) == (500.0, "USD", False)


def report_revenue(store, tmp_path, now):
    from nurture.reporting import build_report
    from nurture.spec.project import load_project
    return build_report(store, load_project(write_project(tmp_path / "p", {})), now).sources_total.revenue


@pytest.mark.parametrize("between", ["closedlost", "contractsent"])
def test_a_deal_won_again_after_being_lost_or_reopened_reads_the_crms_new_amount(store, hubspot, tmp_path, between):
    """won 12000 → lost (or reopened) → won again at 1200: the deal's one deal_won (its id taken
    by the first win) is brought to the deal as it stands, as for a deal that stayed won."""
    ann = add_contact(store, "ann@example.com")
    hubspot.put_deal("9", stage="closedwon", modified=NOW - 5 * DAY, closed=NOW - 5 * DAY,
                     contacts=("ann@example.com",), amount="12000", currency="EUR")
    pull(store, hubspot)
    hubspot.put_deal("9", stage=between, modified=NOW - 4 * DAY, closed=NOW - 4 * DAY,
                     contacts=("ann@example.com",), amount="12000", currency="EUR")
    pull(store, hubspot, NOW + timedelta(hours=1))
    hubspot.put_deal("9", stage="closedwon", modified=NOW - 3 * DAY, closed=NOW - 3 * DAY,
                     contacts=("ann@example.com",), amount="1200", currency="EUR")
    result = pull(store, hubspot, NOW + timedelta(hours=2))
    assert (result.deals.corrected, result.deals.corrected_revenue) == (1, -10800.0)
    [(contact, props)] = [(e[1], e[3]) for e in deal_events(store) if e[2] == "deal_won"]
    assert (contact, props["amount"], props["value"]) == (ann, 1200.0, 1200.0)
    assert report_revenue(store, tmp_path, NOW + DAY) == 1200.0
    assert pull(store, hubspot, NOW + timedelta(hours=3)).deals.corrected == 0


def test_a_deal_whose_contact_was_erased_keeps_it_and_is_neither_handed_on_nor_written_again(store, hubspot,
                                                                                           tmp_path):
    """Deal 11 (1000 EUR won) is ann's, bob its second contact. ann is erased (her deal_won keeps
    its amount), then the deal is edited in HubSpot and read again: it stays ann's, with no new
    event and no address — not bob's with a second deal_won (revenue counted twice)."""
    from nurture.privacy.erase import erase_contacts
    from nurture.registry import IntegrationContext
    from nurture.spec.project import load_project
    ann, bob = add_contact(store, "ann@example.com"), add_contact(store, "bob@example.com")
    hubspot.put_deal("11", stage="closedwon", modified=NOW - 3 * DAY, closed=NOW - 3 * DAY, amount="1000",
                     currency="EUR", contacts=("ann@example.com", "bob@example.com"))
    pull(store, hubspot)
    root = write_project(tmp_path / "e", {})
    erase_contacts(store, load_project(root), [("ann@example.com", ann)],
                   context=IntegrationContext(root, root / ".nurture", {}), actor="test", reason="request")
    before = deal_events(store)
    hubspot.put_deal("11", stage="contractsent", modified=NOW - DAY, amount="1000", name="renamed",
                     currency="EUR", contacts=("ann@example.com", "bob@example.com"))
    result = pull(store, hubspot, NOW + timedelta(hours=1))
    row = deal_rows(store)["11"]
    assert (row.contact_id, row.email, row.stage, row.name) == (ann, None, "contractsent", "renamed")
    assert (result.deals.events, deal_events(store)) == (0, before)
    assert {e[1] for e in before} == {ann} and contact_row(store, bob).lifecycle_stage == "lead"
    assert report_revenue(store, tmp_path, NOW + DAY) == 1000.0


def test_a_deal_naming_an_address_a_contact_is_known_by_goes_to_that_contact(store, hubspot):
    """ann signed up as ann@home.example; her app identified her with ann@work.example too
    (contact_identity). A deal naming ann@work.example is hers — read at once, or waiting for
    that address until the link is made."""
    from nurture.identities import Who, link
    ann = add_contact(store, "ann@home.example", external_id="u-1")
    with store.engine.begin() as conn:
        link(conn, ann, Who(external_id="u-1", email="ann@work.example"), NOW - 9 * DAY)
    hubspot.put_deal("77", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="900",
                     currency="EUR", contacts=("ann@work.example",))
    hubspot.put_deal("78", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="100",
                     currency="EUR", contacts=("ann@office.example",))
    hubspot.put_deal("79", stage="appointmentscheduled", modified=NOW - DAY / 2)  # moves the cursor past 78
    result = pull(store, hubspot)
    assert (result.deals.won, result.deals.revenue, sorted(result.deals.examples)) == (
        1, 900.0, [("78", "ann@office.example"), ("79", None)])
    with store.engine.begin() as conn:
        link(conn, ann, Who(external_id="u-1", email="ann@office.example"), NOW)
    later = pull(store, hubspot, NOW + timedelta(hours=1))  # deal 78 itself did not change
    assert (later.deals.attached, later.deals.revenue) == (1, 100.0)
    assert {d: r.contact_id for d, r in deal_rows(store).items()} == {"77": ann, "78": ann, "79": None}
    assert sorted((e[0], e[1]) for e in deal_events(store) if e[2] == "deal_won") == [
        ("deal:hubspot:77:won", ann), ("deal:hubspot:78:won", ann)]


def test_a_waiting_deal_goes_to_the_first_of_its_contacts_in_the_crms_order_that_appears(store, hubspot):
    """Deal 23 names zoe, bob and cat, none known; a later deal moves the cursor past it. cat
    and bob sign up: the next pull (deal 23 unchanged in HubSpot) gives it to bob, the first of
    them in the CRM's order — not only when zoe, its first address, appears."""
    hubspot.put_deal("23", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="700", currency="EUR",
                     contacts=("zoe@example.com", "bob@example.com", "cat@example.com"))
    hubspot.put_deal("24", stage="appointmentscheduled", modified=NOW - DAY / 2)  # moves the cursor on
    assert ("23", "zoe@example.com") in pull(store, hubspot).deals.examples
    add_contact(store, "cat@example.com")
    bob = add_contact(store, "bob@example.com")
    later = pull(store, hubspot, NOW + timedelta(hours=1))
    assert (later.deals.attached, later.deals.won, later.deals.revenue) == (1, 1, 700.0)
    assert (deal_rows(store)["23"].contact_id, deal_rows(store)["23"].email) == (bob, "bob@example.com")
    assert [(e[1], e[2]) for e in deal_events(store)] == [(bob, "deal_created"), (bob, "deal_won")]
    assert pull(store, hubspot, NOW + timedelta(hours=2)).deals.events == 0


def test_an_erasure_removes_every_address_a_waiting_deal_names(store, hubspot, tmp_path):
    """A waiting deal names zoe and bob. bob — known to no contact, held only by the deal — is
    erased: his address leaves the deal (the erasure is `erased`, not `not_found`), so he can
    never be matched; zoe's stays, and the deal is hers when she signs up."""
    from nurture.privacy.erase import erase_emails
    from nurture.registry import IntegrationContext
    from nurture.spec.project import load_project
    from nurture.store.tables import deal_address_t
    hubspot.put_deal("25", stage="closedwon", modified=NOW - DAY, closed=NOW - DAY, amount="300", currency="EUR",
                     contacts=("bob@example.com", "zoe@example.com"))
    hubspot.put_deal("26", stage="appointmentscheduled", modified=NOW - DAY / 2)  # moves the cursor on
    pull(store, hubspot)
    root = write_project(tmp_path / "e", {})
    [erased] = erase_emails(store, load_project(root), ["bob@example.com"],
                            context=IntegrationContext(root, root / ".nurture", {}), actor="test", reason="request")
    assert (erased.outcome, erased.removed["deals"]) == ("erased", 1)
    assert [tuple(r) for r in read(store, deal_address_t.c.deal_id, deal_address_t.c.email)] == [
        ("25", "zoe@example.com")]
    assert deal_rows(store)["25"].email is None
    zoe = add_contact(store, "zoe@example.com")
    assert pull(store, hubspot, NOW + timedelta(hours=1)).deals.attached == 1
    assert (deal_rows(store)["25"].contact_id, deal_rows(store)["25"].email) == (zoe, "zoe@example.com")


# ---------------------------------------------------------------- a webhook and a pull of one deal at once
# Each test holds the first writer's transaction open until the second waits for it (PostgreSQL:
# at the deal's row or its key; SQLite: at the write lock), then commits it: the second has
# begun before the first committed, every time.

def _snapshot(stage: str, outcome: str, minutes_ago: int) -> DealSnapshot:
    modified = NOW - timedelta(minutes=minutes_ago)
    return DealSnapshot(deal_id="D-1", stage=stage, outcome=outcome, modified_at=modified,
                        contacts=(CrmContact("ada@example.com"),), name="Pilot", pipeline="sales", amount=800.0,
                        currency="EUR", closed_at=modified if outcome == "won" else None,
                        created_at=NOW - timedelta(days=3))


def _apply(snapshot: DealSnapshot):
    return lambda conn: apply_deals(conn, "hubspot", [snapshot], now=NOW, currency="EUR")


def _stage_events(store) -> dict[str, str]:
    """stage entered → the `from` of its deal_stage_changed event"""
    return {p["to"]: p["from"] for _, _, name, p, _ in deal_events(store) if name == "deal_stage_changed"}


@pytest.mark.parametrize("stored_before", [True, False], ids=["stored", "new"])
def test_a_pulls_older_snapshot_that_waited_for_the_webhooks_newer_one_is_stale_and_changes_nothing(store,
                                                                                                  stored_before):
    add_contact(store, "ada@example.com")
    if stored_before:  # stored by an earlier pull: qualified (else the deal is new to both)
        in_transaction(store, _apply(_snapshot("qualified", "open", 60)))
    webhook = _snapshot("closedwon", "won", 1)  # read by the webhook: won a minute ago
    pulled = _snapshot("presentation", "open", 10)  # read by the pull a moment before it was won
    result = race(store, _apply(webhook), lambda: in_transaction(store, _apply(pulled)))
    deal = deal_rows(store)["D-1"]
    assert (deal.stage, deal.outcome, deal.modified_at.replace(tzinfo=None)) == \
        ("closedwon", "won", webhook.modified_at.replace(tzinfo=None))
    assert (result.stale, result.new, result.changed, result.events, result.lifecycle) == (1, 0, 0, 0, {})
    assert _stage_events(store) == ({"closedwon": "qualified"} if stored_before else {})


def test_a_webhook_that_waited_for_an_older_pull_reads_the_pulls_stage_as_its_from(store):
    add_contact(store, "ada@example.com")
    in_transaction(store, _apply(_snapshot("qualified", "open", 60)))
    pulled = _snapshot("presentation", "open", 10)
    webhook = _snapshot("closedwon", "won", 1)
    result = race(store, _apply(pulled), lambda: in_transaction(store, _apply(webhook)))
    deal = deal_rows(store)["D-1"]
    assert (deal.stage, deal.outcome, result.stale, result.changed, result.won) == ("closedwon", "won", 0, 1, 1)
    assert _stage_events(store) == {"presentation": "qualified", "closedwon": "presentation"}
