"""The `handover` step: an MQL goes to sales once, with stage, score and an SLA-bound task —
to the JSONL file by default, to a CRM integration when configured — failures are recorded
and retried, and the report counts who was contacted within the SLA."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Sequence

import pytest

from nurture import registry
from nurture.registry import CrmDestination
from nurture.runtime import run_tick
from nurture.scoring.handover import HandoverRecord, HandoverResult, retry_pending
from nurture.reporting.report import handover_stats
from nurture.spec.project import load_project
from nurture.store.tables import handover_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, contact_row, journey_yaml, messages, subscriber

T0 = utc(2026, 11, 16, 10)  # a Monday, 10:00 UTC: outside quiet hours

MQL_JOURNEY = journey_yaml("mql", """
    - id: to_sales
      handover: {sla: 24h, owner: ana@sales.example, note: "hot lead"}
    - id: hello
      send: {channel: email, template: hello, subject: "Hi"}
""", trigger="{event: demo_request}")


def _handovers(store):
    with store.engine.connect() as conn:
        rows = conn.execute(handover_t.select().order_by(handover_t.c.id)).all()
        conn.rollback()
    return rows


def test_handover_writes_the_mql_with_stage_score_and_sla_task_once(make_runtime, store):
    rt = make_runtime({"mql": MQL_JOURNEY})
    cid = subscriber(store, "lena@acme.example", first_name="Lena", last_name="Berg", score=72.5,
                     attributes={"company": "Acme GmbH"})
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    run_tick(rt, "mql", T0 + timedelta(minutes=10))  # a second tick hands over nothing again

    [h] = _handovers(store)
    assert (h.contact_id, h.stage, h.score, h.status, h.destination, h.owner) == (cid, "mql", 72.5, "delivered", "file",
                                                                                  "ana@sales.example")
    assert h.sla_due_at == T0 + timedelta(hours=24)  # the step was due when the event happened
    assert contact_row(store, cid).lifecycle_stage == "mql"
    lines = (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["contact"] == {"email": "lena@acme.example", "first_name": "Lena", "last_name": "Berg",
                                 "phone": None, "company": "Acme GmbH", "lifecycle_stage": "mql", "score": 72.5}
    assert record["task"] == {"title": "Contact MQL Lena Berg (score 72)", "due_at": "2026-11-17T10:00:00+00:00",
                              "owner": "ana@sales.example", "note": "hot lead"}
    assert [m.status for m in messages(store)] == ["sent"]  # the journey goes on after the handover


def test_handovers_are_made_in_the_order_the_contacts_entered_the_journey(make_runtime, store):
    """The batch of due enrollments comes in the database's order: on PostgreSQL where their
    latest row versions lie. Sales' queue (and a CRM's requests) still follow the order of entry."""
    from sqlalchemy import update

    from nurture.store.tables import enrollment_t
    rt = make_runtime({"mql": journey_yaml("mql", """
    - id: pause
      wait: 1h
    - id: to_sales
      handover: {sla: 24h}
    """, trigger="{event: demo_request}")})
    first, second = (subscriber(store, f"{name}@acme.example", score=70) for name in ("ann", "bo"))
    for cid in (first, second):
        add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))  # both enter, waiting
    for step in ("elsewhere", "pause"):  # the first one's row version now lies after the second's
        with store.engine.begin() as conn:  # (a changed indexed column: a new version, a new index entry)
            conn.execute(update(enrollment_t).where(enrollment_t.c.contact_id == first).values(step_id=step))
    run_tick(rt, "mql", T0 + timedelta(hours=2))
    assert [h.contact_id for h in _handovers(store)] == [first, second]


def test_handover_never_lowers_a_later_stage(make_runtime, store):
    rt = make_runtime({"mql": MQL_JOURNEY})
    cid = subscriber(store, "sam@corp.example", lifecycle_stage="sql", score=80)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    assert contact_row(store, cid).lifecycle_stage == "sql"


class FlakyCrm(CrmDestination):
    """A CRM plug-in that takes handovers: the first call fails as a provider outage would."""
    name = "flaky_crm"
    calls: list[list[str]] = []
    records: list[list[HandoverRecord]] = []

    @classmethod
    def from_env(cls, context):
        return cls()

    def identifiers(self, member):  # pragma: no cover - the segment-sync half is not used here
        return None

    def add(self, target, members, batch):  # pragma: no cover
        return []

    def remove(self, target, members, batch):  # pragma: no cover
        return []

    def hand_over(self, records: Sequence[HandoverRecord]) -> list[HandoverResult]:
        FlakyCrm.calls.append([r.email for r in records])
        FlakyCrm.records.append(list(records))
        if len(FlakyCrm.calls) == 1:
            raise ConnectionError("HubSpot answered 503")
        return [HandoverResult(r.handover_id, True, external_id=f"crm-{r.handover_id}") for r in records]


class SegmentOnlyCrm(FlakyCrm):
    name = "segment_only_crm"
    hand_over = None  # type: ignore[assignment]


@pytest.fixture
def crm_plugins():
    FlakyCrm.calls, FlakyCrm.records = [], []
    registry.register(FlakyCrm)
    registry.register(SegmentOnlyCrm)
    yield
    registry._registry.pop("flaky_crm", None)
    registry._registry.pop("segment_only_crm", None)


def test_a_failed_crm_handover_is_recorded_and_retried(make_runtime, store, crm_plugins):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "flaky_crm"
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    [h] = _handovers(store)
    assert (h.status, h.destination, h.attempts) == ("pending", "flaky_crm", 1)
    assert "HubSpot answered 503" in h.reason
    retry_pending(rt, T0 + timedelta(hours=1))
    [h] = _handovers(store)
    assert (h.status, h.external_id, h.attempts) == ("delivered", f"crm-{h.id}", 2)
    assert FlakyCrm.calls == [["kim@firm.example"], ["kim@firm.example"]]


def test_a_crm_that_cannot_take_handovers_is_a_recorded_failure(make_runtime, store, crm_plugins):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "segment_only_crm"
    cid = subscriber(store, "jo@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    [h] = _handovers(store)
    assert h.status == "pending" and "cannot take handovers" in h.reason


def test_report_counts_mqls_contacted_within_the_sla(make_runtime, store):
    rt = make_runtime({"mql": MQL_JOURNEY})
    ids = {}
    for name in ("fast", "late", "never", "fresh"):
        ids[name] = subscriber(store, f"{name}@lead.example", score=70)
    for name in ("fast", "late", "never"):
        add_event(store, ids[name], "demo_request", T0)
    add_event(store, ids["fresh"], "demo_request", T0 + timedelta(hours=20))
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    run_tick(rt, "mql", T0 + timedelta(hours=20, minutes=5))
    add_event(store, ids["fast"], "sales_contacted", T0 + timedelta(hours=3))
    add_event(store, ids["late"], "sales_contacted", T0 + timedelta(hours=30))
    add_event(store, ids["never"], "sales_contacted", T0 - timedelta(days=3))  # before the handover: not counted
    with store.engine.connect() as conn:
        stats = handover_stats(conn, T0 + timedelta(hours=36))
    assert (stats.total, stats.delivered, stats.contacted_within_sla, stats.contacted_late, stats.overdue,
            stats.open_within_sla) == (4, 4, 1, 1, 1, 1)


def test_handover_keys_are_validated_with_locations(make_project):
    bad = journey_yaml("mql", """
        - id: to_sales
          handover: {sla: tomorrow, ownr: ana}
    """)
    spec = load_project(make_project({"mql": bad}))
    messages_ = [str(e) for e in spec.errors]
    assert "journeys/mql.yaml:5:21: 'tomorrow' is not a duration: write e.g. 30m, 2h, 3d or 1w" in messages_
    assert "journeys/mql.yaml:5:31: unknown key 'ownr' (did you mean 'owner'?)" in messages_


def test_the_handover_line_carries_the_contacts_own_later_stage(make_runtime, store):
    """A step's `stage` (default mql) never lowers the contact: a customer handed over is
    handed over as a customer — in the line and in the task's title."""
    rt = make_runtime({"mql": MQL_JOURNEY})
    cid = subscriber(store, "cus@corp.example", first_name="Cy", lifecycle_stage="customer", score=80)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    [line] = (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["contact"]["lifecycle_stage"], record["contact"]["score"]) == ("customer", 80.0)
    assert record["task"]["title"] == "Contact customer Cy (score 80)"
    assert contact_row(store, cid).lifecycle_stage == "customer"


def test_a_retried_handover_sends_the_score_the_contact_has_when_it_is_delivered(make_runtime, store, crm_plugins):
    from sqlalchemy import update

    from nurture.store.tables import contact_t
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "flaky_crm"  # the first call fails
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    with store.engine.begin() as conn:  # the hourly scoring run meanwhile
        conn.execute(update(contact_t).where(contact_t.c.id == cid).values(score=81.5, lifecycle_stage="sql"))
    retry_pending(rt, T0 + timedelta(hours=1))
    [_, [record]] = FlakyCrm.records
    assert (record.score, record.lifecycle_stage, record.task_title) == (81.5, "sql", "Contact SQL kim@firm.example (score 82)")


def test_a_crm_that_is_not_configured_yet_keeps_the_handover_pending_without_using_attempts(make_runtime, store,
                                                                                            crm_plugins):
    """A configuration refusal (IntegrationError: no such CRM, no token) is fixed by the
    operator, not by retrying: the handover waits for it, however many runs that takes."""
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "flaky_crm_typo"
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    for hour in range(1, 8):  # seven hourly scoring runs
        retry_pending(rt, T0 + timedelta(hours=hour))
    [h] = _handovers(store)
    assert (h.status, h.attempts) == ("pending", 0) and "no crm named 'flaky_crm_typo'" in h.reason
    rt.env["NURTURE_HANDOVER_CRM"] = "flaky_crm"
    FlakyCrm.calls = [["(the outage is over)"]]
    retry_pending(rt, T0 + timedelta(hours=8))
    [h] = _handovers(store)
    assert (h.status, h.attempts, h.external_id) == ("delivered", 1, f"crm-{h.id}")


HOLDOUT_MQL = journey_yaml("mql", """
    - id: hello
      send: {channel: email, template: hello, subject: "Hi"}
    - id: to_sales
      handover: {sla: 24h}
""", trigger="{event: demo_request}", extra="holdout: 50%")


def test_a_holdout_member_passes_a_handover_step_without_being_handed_to_sales(make_runtime, store):
    """The holdout is enrolled and never acted on: sales calling it would bias the lift as a
    message would. A holdout member at a handover step gets a `holdout` row (the step's log, as
    a held-out send's row in the message log), no task, no line, no stage, and moves on; the
    report's handover figures and MQLs count only the contact really handed over."""
    from sqlalchemy import select

    from nurture.reporting.sources import facts_subquery
    from nurture.runtime.stable_random import in_holdout
    from nurture.store.tables import event_t
    from tests.engine_fixtures import enrollments
    rt = make_runtime({"mql": HOLDOUT_MQL})
    held, treated = [], []
    i = 0
    while len(held) < 2 or not treated:  # two contacts the stable hash holds out, one it treats
        cid = subscriber(store, f"h{i}@acme.example", first_name="H", score=80)
        i += 1
        (held if in_holdout("mql", cid, 0.5) else treated).append(cid)
    treated = treated[:1]
    for cid in held + treated:
        add_event(store, cid, "demo_request", T0)
    tick = run_tick(rt, "mql", T0 + timedelta(minutes=5))
    run_tick(rt, "mql", T0 + timedelta(minutes=10))  # a second tick changes nothing

    lines = [json.loads(x) for x in (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()]
    assert [line["contact"]["email"] for line in lines] == [contact_row(store, treated[0]).email]
    assert tick.outcomes[("to_sales", "holdout", "holdout")] == 2
    assert tick.outcomes[("to_sales", "handover_delivered", None)] == 1
    rows = {h.contact_id: h for h in _handovers(store)}
    assert {cid: (rows[cid].status, rows[cid].reason, rows[cid].claim, rows[cid].delivered_at) for cid in held} == {
        cid: ("holdout", "holdout", None, None) for cid in held}
    assert rows[treated[0]].status == "delivered"
    assert [contact_row(store, cid).lifecycle_stage for cid in held + treated] == ["lead", "lead", "mql"]
    assert {e.contact_id: e.status for e in enrollments(store, journey="mql")} == {
        cid: "completed" for cid in held + treated}  # moved on past the step
    assert retry_pending(rt, T0 + timedelta(hours=1)) == {}  # a holdout row is never delivered later
    with store.engine.connect() as conn:
        stats = handover_stats(conn, T0 + timedelta(hours=36))
        facts_ = facts_subquery(T0 + timedelta(hours=36), with_leads=False)
        facts = {r.contact_id: (r.reached_mql, r.mql_at) for r in conn.execute(select(facts_))}
        promoted = conn.execute(select(event_t.c.contact_id).where(event_t.c.name == "lifecycle_stage_changed")
                                ).scalars().all()
    assert (stats.total, stats.delivered, stats.overdue) == (1, 1, 1)  # the held-out rows are no handover
    assert [facts[cid][0] for cid in held] == [0, 0] and facts[treated[0]][0] == 1
    assert promoted == treated
