"""The sales handover through HubSpot CRM v3 (`NURTURE_HANDOVER_CRM=hubspot`): a journey's MQL
is upserted by e-mail with its lifecycle stage and score, and gets one sales task due at the
SLA, assigned to its owner and associated with the contact — against a fake HubSpot on
127.0.0.1 that checks what it receives. Rate limits are waited out as HubSpot's headers say;
a record HubSpot refuses stays pending and is delivered exactly once by the next run; the
token never shows up in rows, logs or errors."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from integrations.http_retry import RetryPolicy
from integrations.hubspot import HubSpotDestination
from nurture.scoring.handover import HandoverRecord, retry_pending
from nurture.runtime import run_tick
from nurture.store.tables import handover_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, subscriber
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot

TOKEN = "pat-na1-s3cret-never-logged"
OWNER_ID = "6166860"
T0 = utc(2026, 11, 16, 10)  # a Monday, 10:00 UTC: outside quiet hours

MQL_JOURNEY = journey_yaml("mql", """
    - id: to_sales
      handover: {sla: 24h, owner: ana@sales.example, note: "hot lead"}
    - id: hello
      send: {channel: email, template: hello, subject: "Hi"}
""", trigger="{event: demo_request}")


@pytest.fixture
def hubspot():
    server = FakeHubSpot(TOKEN, owners={"ana@sales.example": OWNER_ID}).start()
    yield server
    server.stop()


@pytest.fixture
def waits(monkeypatch):
    """The backoff waits the integration asked for (the policy's injectable sleep: no real waiting)."""
    asked: list[float] = []
    monkeypatch.setattr(RetryPolicy, "from_env", classmethod(
        lambda cls, env: cls(max_attempts=int(env.get("NURTURE_SYNC_MAX_ATTEMPTS", 5)), sleep=asked.append)))
    return asked


@pytest.fixture
def runtime(make_runtime, hubspot, waits):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env.update({"NURTURE_HANDOVER_CRM": "hubspot", "NURTURE_HUBSPOT_TOKEN": TOKEN,
                   "NURTURE_HUBSPOT_BASE_URL": hubspot.url})
    return rt


def handovers(store):
    with store.engine.connect() as conn:
        rows = conn.execute(handover_t.select().order_by(handover_t.c.id)).all()
        conn.rollback()
    return rows


def upserted(server: FakeHubSpot) -> list[list[str]]:
    """The e-mails of each contacts upsert request HubSpot received."""
    return [[i["id"] for i in r.json()["inputs"]] for r in server.requests
            if r.path == "/crm/v3/objects/contacts/batch/upsert"]


def mql(store, email: str, **fields) -> int:
    cid = subscriber(store, email, **fields)
    add_event(store, cid, "demo_request", T0)
    return cid


def test_an_mql_becomes_a_hubspot_contact_with_stage_and_score_and_a_task_due_at_the_sla(runtime, store, hubspot):
    mql(store, "Lena@Acme.example", first_name="Lena", last_name="Berg", score=72.5,
        attributes={"company": "Acme GmbH"})
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    run_tick(runtime, "mql", T0 + timedelta(minutes=10))  # nothing is handed over twice

    assert hubspot.problems == []
    assert hubspot.properties == {"lena@acme.example": {
        "email": "lena@acme.example", "firstname": "Lena", "lastname": "Berg", "company": "Acme GmbH",
        "lifecyclestage": "marketingqualifiedlead", "nurture_score": "72.5"}}
    contact_id = hubspot.contacts["lena@acme.example"]
    [task] = hubspot.tasks
    assert task["contact_ids"] == [contact_id]
    props = task["properties"]
    assert {k: v for k, v in props.items() if k != "hs_task_body"} == {
        "hs_task_subject": "Contact MQL Lena Berg (score 72)", "hs_timestamp": "2026-11-17T10:00:00.000Z",
        "hs_task_status": "NOT_STARTED", "hs_task_priority": "HIGH", "hubspot_owner_id": OWNER_ID}
    assert props["hs_task_body"].startswith("hot lead\nScore 72.5, stage mql, from journey mql.")
    [h] = handovers(store)
    assert (h.status, h.destination, h.attempts, h.reason) == ("delivered", "hubspot", 1, None)
    assert h.external_id == f"contact:{contact_id} task:{task['id']}"
    assert not (runtime.data_dir / "handover" / "handovers.jsonl").exists()
    assert len(upserted(hubspot)) == 1


def test_a_429_is_waited_out_as_hubspots_rate_limit_headers_say_then_delivered(runtime, store, hubspot, waits):
    mql(store, "kim@firm.example", score=65)
    hubspot.fail_next(1, FakeHubSpot.rate_limited())  # X-HubSpot-RateLimit-Interval-Milliseconds: 10000
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    assert waits == [10.0]
    [h] = handovers(store)
    assert (h.status, h.attempts) == ("delivered", 1)
    assert len(hubspot.tasks_for("kim@firm.example")) == 1
    assert upserted(hubspot) == [["kim@firm.example"], ["kim@firm.example"]]
    assert hubspot.problems == []


def test_a_record_refused_in_a_207_stays_pending_and_the_next_run_delivers_it_exactly_once(runtime, store, hubspot):
    mql(store, "good@firm.example", score=70)
    mql(store, "bad@firm.example", score=70)
    hubspot.rejected = {"bad@firm.example"}
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    good, bad = handovers(store)
    assert (good.status, bad.status, bad.attempts) == ("delivered", "pending", 1)
    assert bad.reason.startswith("VALIDATION_ERROR: Property values were not valid")
    assert (len(hubspot.tasks_for("good@firm.example")), len(hubspot.tasks_for("bad@firm.example"))) == (1, 0)

    hubspot.rejected = set()  # the data was fixed in HubSpot
    retry_pending(runtime, T0 + timedelta(hours=1))
    retry_pending(runtime, T0 + timedelta(hours=2))  # nothing left to do
    good, bad = handovers(store)
    assert (good.status, bad.status, bad.attempts, bad.reason) == ("delivered", "delivered", 2, None)
    assert bad.external_id == f"contact:{hubspot.contacts['bad@firm.example']} task:{hubspot.tasks[1]['id']}"
    assert (len(hubspot.tasks_for("good@firm.example")), len(hubspot.tasks_for("bad@firm.example"))) == (1, 1)
    assert upserted(hubspot) == [["good@firm.example", "bad@firm.example"], ["bad@firm.example"]]
    assert hubspot.problems == []


def test_a_task_hubspot_fails_to_create_is_retried_without_a_second_task_for_the_others(runtime, store, hubspot):
    runtime.env["NURTURE_SYNC_MAX_ATTEMPTS"] = "2"
    mql(store, "ok@firm.example", score=70)
    mql(store, "flaky@firm.example", score=70)
    hubspot.rejected_tasks = {"flaky@firm.example"}  # HubSpot answers 502 on this contact's task
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    ok, flaky = handovers(store)
    assert (ok.status, flaky.status) == ("delivered", "pending")
    assert flaky.reason.startswith(f"contact {hubspot.contacts['flaky@firm.example']} upserted, task not created: "
                                   "HTTP 502 server error (gave up after 2 attempts)")
    hubspot.rejected_tasks = set()
    retry_pending(runtime, T0 + timedelta(hours=1))
    assert [h.status for h in handovers(store)] == ["delivered", "delivered"]
    assert [len(hubspot.tasks_for(e)) for e in ("ok@firm.example", "flaky@firm.example")] == [1, 1]


def test_a_task_whose_answer_was_lost_is_found_by_the_next_run_and_not_created_again(runtime, store, hubspot):
    runtime.env["NURTURE_SYNC_MAX_ATTEMPTS"] = "1"
    mql(store, "zoe@firm.example", score=70)
    hubspot.lose_task_answers = 1  # HubSpot creates the task; the connection drops before its answer
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    [h] = handovers(store)
    assert (h.status, h.reason) == ("pending", f"contact {hubspot.contacts['zoe@firm.example']} upserted, task not created: "
                                               "RemoteProtocolError talking to hubspot")
    retry_pending(runtime, T0 + timedelta(hours=1))
    [task] = hubspot.tasks_for("zoe@firm.example")
    [h] = handovers(store)
    assert (h.status, h.external_id) == ("delivered", f"contact:{hubspot.contacts['zoe@firm.example']} task:{task['id']}")
    assert [r.path for r in hubspot.requests].count("/crm/v3/objects/tasks") == 1
    assert hubspot.problems == []


def test_a_paging_cursor_hubspot_repeats_ends_the_read_and_the_handover_waits(runtime, store, hubspot):
    """The existing tasks' read followed every `paging.next.after`: a cursor HubSpot gave
    again and again kept the tick in that loop, inside its transaction, for ever."""
    runtime.env["NURTURE_SYNC_MAX_ATTEMPTS"] = "1"
    mql(store, "zoe@firm.example", score=70)
    hubspot.lose_task_answers = 1  # a task exists: the next run reads the contact's tasks first
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    hubspot.task_paging_loops = True
    retry_pending(runtime, T0 + timedelta(hours=1))
    [h] = handovers(store)
    assert h.status == "pending" and h.reason.endswith("existing tasks not read: HubSpot repeated a paging cursor")
    reads = [r for r in hubspot.requests if r.path == "/crm/v4/associations/contacts/tasks/batch/read"]
    assert len(reads) == 2 and len(hubspot.tasks_for("zoe@firm.example")) == 1  # no second task


def test_the_token_never_appears_in_rows_logs_or_errors(runtime, store, hubspot, caplog):
    caplog.set_level(logging.DEBUG)
    mql(store, "lee@firm.example", score=70)
    runtime.env["NURTURE_HUBSPOT_TOKEN"] = wrong = "pat-na1-wrong-and-secret"
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    [h] = handovers(store)
    assert h.status == "pending" and h.reason.startswith("HTTP 401")
    hubspot.problems.clear()  # the fake noted the bad auth, as it should

    runtime.env["NURTURE_HUBSPOT_TOKEN"] = TOKEN
    hubspot.fail_next(5, Reply(503, {"status": "error", "message": "Service unavailable"}))
    retry_pending(runtime, T0 + timedelta(hours=1))  # the 503s outlast the retries: still pending
    retry_pending(runtime, T0 + timedelta(hours=2))
    [h] = handovers(store)
    assert h.status == "delivered"
    stored = " ".join(str(v) for row in handovers(store) for v in row)
    for secret in (TOKEN, wrong):
        assert secret not in stored
        assert secret not in caplog.text
    assert hubspot.requests and all(r.headers["authorization"] in (f"Bearer {TOKEN}", f"Bearer {wrong}")
                                    for r in hubspot.requests)


def test_without_a_token_the_handover_waits_with_a_clear_reason(runtime, store):
    del runtime.env["NURTURE_HUBSPOT_TOKEN"]
    mql(store, "max@firm.example", score=70)
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    [h] = handovers(store)
    assert h.status == "pending"
    assert "set NURTURE_HUBSPOT_TOKEN to a private app access token" in h.reason


def test_a_customer_handed_over_is_not_created_in_hubspot_as_an_mql(runtime, store, hubspot):
    mql(store, "cus@corp.example", lifecycle_stage="customer", score=80)
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    assert hubspot.properties["cus@corp.example"]["lifecyclestage"] == "customer"
    [task] = hubspot.tasks
    assert task["properties"]["hs_task_subject"] == "Contact customer cus@corp.example (score 80)"


def test_a_missing_score_property_keeps_the_handover_pending_until_the_property_exists(runtime, store, hubspot):
    hubspot.number_properties = set()  # `nurture_score` not created in the portal yet
    mql(store, "kim@firm.example", score=65)
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    for hour in range(1, 8):  # seven hourly scoring runs: more than MAX_ATTEMPTS
        retry_pending(runtime, T0 + timedelta(hours=hour))
    [h] = handovers(store)
    assert (h.status, h.attempts) == ("pending", 0)
    assert 'Property \\"nurture_score\\" does not exist' in h.reason
    hubspot.number_properties = {"nurture_score"}  # the operator creates the property
    retry_pending(runtime, T0 + timedelta(hours=8))
    [h] = handovers(store)
    assert (h.status, h.attempts) == ("delivered", 1)
    assert len(hubspot.tasks_for("kim@firm.example")) == 1


def test_a_refused_token_waits_without_using_attempts_and_bad_data_still_fails(runtime, store, hubspot):
    runtime.env["NURTURE_HUBSPOT_TOKEN"] = "pat-na1-revoked"
    mql(store, "lee@firm.example", score=70)
    mql(store, "bad@firm.example", score=70)
    run_tick(runtime, "mql", T0 + timedelta(minutes=5))
    assert [(h.status, h.attempts) for h in handovers(store)] == [("pending", 0), ("pending", 0)]
    runtime.env["NURTURE_HUBSPOT_TOKEN"] = TOKEN
    hubspot.problems.clear()  # the fake noted the bad auth, as it should
    hubspot.rejected = {"bad@firm.example"}  # a refusal of the record itself uses up attempts
    for hour in range(1, 7):
        retry_pending(runtime, T0 + timedelta(hours=hour))
    assert [(h.status, h.attempts) for h in handovers(store)] == [("delivered", 1), ("failed", 5)]


# -- the integration on its own (no database): batching, naming, owners


def record(i: int, email: str, **fields) -> HandoverRecord:
    base = dict(handover_id=i, key=f"{i}:to_sales", email=email, first_name=None, last_name=None, phone=None,
                company=None, lifecycle_stage="mql", score=61.0, task_title=f"Contact MQL {email}",
                task_due_at="2026-11-17T10:00:00+00:00", owner=None, note="", journey="b2b_nurture")
    return HandoverRecord(**{**base, **fields})


def test_more_than_100_handovers_are_upserted_in_batches_of_at_most_100(hubspot):
    dest = HubSpotDestination(TOKEN, hubspot.url)
    try:
        results = dest.hand_over([record(i, f"lead{i}@corp.example") for i in range(1, 102)])
    finally:
        dest.close()
    assert [len(batch) for batch in upserted(hubspot)] == [100, 1]
    assert all(r.ok for r in results) and len(hubspot.tasks) == 101
    assert hubspot.problems == []


def test_two_handovers_of_one_contact_are_one_upsert_input_at_the_furthest_stage_and_two_tasks(hubspot):
    dest = HubSpotDestination(TOKEN, hubspot.url)
    try:
        results = dest.hand_over([record(1, "sam@corp.example", score=61.0),
                                  record(2, "SAM@corp.example", lifecycle_stage="sql", score=88.25),
                                  record(3, None)])
    finally:
        dest.close()
    assert upserted(hubspot) == [["sam@corp.example"]]
    assert hubspot.properties["sam@corp.example"]["lifecyclestage"] == "salesqualifiedlead"
    assert hubspot.properties["sam@corp.example"]["nurture_score"] == "88.25"
    assert [(r.handover_id, r.ok, r.retry) for r in results] == [(1, True, True), (2, True, True), (3, False, False)]
    assert results[2].reason == "no valid e-mail: HubSpot upserts contacts by e-mail"
    assert len(hubspot.tasks_for("sam@corp.example")) == 2


def test_owner_ids_are_used_as_they_are_and_unknown_owners_leave_the_task_unassigned(hubspot):
    dest = HubSpotDestination(TOKEN, hubspot.url, task_priority="MEDIUM")
    try:
        dest.hand_over([record(1, "a@corp.example", owner=OWNER_ID), record(2, "b@corp.example", owner="nobody@x.example"),
                        record(3, "c@corp.example", owner="ana@sales.example"),
                        record(4, "d@corp.example", owner="ana@sales.example")])
    finally:
        dest.close()
    owners = [t["properties"].get("hubspot_owner_id") for t in hubspot.tasks]
    assert owners == [OWNER_ID, None, OWNER_ID, OWNER_ID]
    assert "Owner: nobody@x.example (not a HubSpot user: the task is unassigned)." in hubspot.tasks[1]["properties"]["hs_task_body"]
    assert len([r for r in hubspot.requests if r.path == "/crm/v3/owners"]) == 2  # each e-mail looked up once
    assert {t["properties"]["hs_task_priority"] for t in hubspot.tasks} == {"MEDIUM"}


def test_the_score_property_is_configurable_and_a_missing_one_is_a_readable_failure():
    server = FakeHubSpot(TOKEN, custom_properties=("lead_score",)).start()
    try:
        renamed = HubSpotDestination(TOKEN, server.url, score_property="lead_score")
        [ok] = renamed.hand_over([record(1, "a@corp.example", score=75.0)])
        default = HubSpotDestination(TOKEN, server.url, RetryPolicy(sleep=lambda s: None))
        [missing] = default.hand_over([record(2, "b@corp.example")])
        renamed.close(), default.close()
    finally:
        server.stop()
    assert ok.ok and server.properties["a@corp.example"]["lead_score"] == "75"
    assert not missing.ok and missing.retry
    assert 'Property \\"nurture_score\\" does not exist' in missing.reason
