"""How a handover is delivered (nurture.scoring.handover): claimed and committed first, then
handed to the CRM or the file outside any write transaction, then recorded — so two runs at
once deliver it once, a slow CRM holds up no other writer, a step transaction that fails has
delivered nothing, and a run that dies between its claim and its record loses nothing: its
stale claim is taken over, and the file destination does not write the line twice."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Sequence

import pytest
from sqlalchemy import update

from nurture import registry
from nurture.registry import CrmDestination
from nurture.runtime import run_tick
from nurture.scoring import handover
from nurture.scoring.handover import CLAIM_TTL, HandoverRecord, HandoverResult, retry_pending
from nurture.store.tables import handover_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, subscriber

T0 = utc(2026, 11, 16, 10)
MQL_JOURNEY = journey_yaml("mql", """
    - id: to_sales
      handover: {sla: 24h, owner: ana@sales.example, note: "hot lead"}
""", trigger="{event: demo_request}")


def _handovers(store):
    with store.engine.connect() as conn:
        rows = conn.execute(handover_t.select().order_by(handover_t.c.id)).all()
        conn.rollback()
    return rows


def _lines(rt) -> list[dict]:
    return [json.loads(line) for line in (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()]


def _age_claims(store, by=CLAIM_TTL + timedelta(minutes=1)) -> None:
    """The claims were taken `by` ago (by the wall clock): their run is gone."""
    with store.engine.begin() as conn:
        conn.execute(update(handover_t).where(handover_t.c.claim.is_not(None))
                     .values(claimed_at=handover_t.c.claimed_at - by))


class Died(BaseException):
    """The process ends here (as a SIGKILL would): nothing after it runs, no handler catches it."""


class SlowCrm(CrmDestination):
    """A CRM plug-in whose API takes a while to answer (HubSpot: one task POST per handover,
    429 waits, 5xx backoff); it can fail its next call as an outage would, or die mid-call."""
    name = "slow_crm"
    calls: list = []
    redelivered: list = []  # the keys it was told an earlier run may have delivered
    delay = 0.0
    fail_next = False
    die_next = False
    started = threading.Event()

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
        SlowCrm.calls.append([r.key for r in records])
        SlowCrm.started.set()
        time.sleep(SlowCrm.delay)
        SlowCrm.redelivered.extend(r.key for r in records if r.redelivery)
        if SlowCrm.die_next:
            SlowCrm.die_next = False
            raise Died()
        if SlowCrm.fail_next:
            SlowCrm.fail_next = False
            raise ConnectionError("the CRM answered 503")
        return [HandoverResult(r.handover_id, True, external_id=f"task-{r.handover_id}") for r in records]


@pytest.fixture
def slow_crm():
    SlowCrm.calls, SlowCrm.redelivered, SlowCrm.delay, SlowCrm.fail_next, SlowCrm.die_next = [], [], 0.0, False, False
    SlowCrm.started = threading.Event()
    registry.register(SlowCrm)
    yield SlowCrm
    registry._registry.pop("slow_crm", None)


def test_two_retry_runs_at_once_deliver_a_pending_handover_once(make_runtime, store, slow_crm):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "slow_crm"
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    slow_crm.fail_next = True  # the first attempt fails: pending, for the scoring flow's retry
    run_tick(rt, "mql", T0 + timedelta(minutes=5))
    [h] = _handovers(store)
    assert (h.status, h.attempts) == ("pending", 1)
    other = make_runtime({"mql": MQL_JOURNEY})  # a second worker's scoring flow
    other.env["NURTURE_HANDOVER_CRM"] = "slow_crm"
    slow_crm.delay = 1.0
    runs = [threading.Thread(target=retry_pending, args=(r, T0 + timedelta(hours=1))) for r in (rt, other)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert slow_crm.calls == [["1:to_sales"], ["1:to_sales"]]  # (PostgreSQL, unclaimed: by both runs, 3 calls)
    [h] = _handovers(store)
    assert (h.status, h.attempts, h.external_id, h.claim) == ("delivered", 2, f"task-{h.id}", None)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_slow_crm_does_not_block_other_writers(make_runtime, store, slow_crm):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "slow_crm"
    slow_crm.delay = 2.0
    cid = subscriber(store, "kim@firm.example", score=65)
    other = subscriber(store, "other@shop.example")
    add_event(store, cid, "demo_request", T0)
    tick = threading.Thread(target=run_tick, args=(rt, "mql", T0 + timedelta(minutes=5)))
    tick.start()
    assert slow_crm.started.wait(30)
    began = time.monotonic()
    add_event(store, other, "add_to_cart", T0)  # an unrelated event arriving meanwhile
    waited = time.monotonic() - began
    tick.join()
    assert waited < 0.5, f"an unrelated event write waited {waited:.1f} s for the CRM"
    assert [h.status for h in _handovers(store)] == ["delivered"]


def test_a_failed_step_transaction_does_not_leave_a_handover_line_behind(make_runtime, store, monkeypatch):
    rt = make_runtime({"mql": MQL_JOURNEY})
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    real_move = handover.move

    def fails(*args, **kwargs):  # anything failing in the step's transaction, before its commit
        raise RuntimeError("the transaction fails")
    monkeypatch.setattr(handover, "move", fails)
    with pytest.raises(RuntimeError):
        run_tick(rt, "mql", T0 + timedelta(minutes=5))
    assert _handovers(store) == []
    assert not (rt.data_dir / "handover" / "handovers.jsonl").exists()
    monkeypatch.setattr(handover, "move", real_move)
    run_tick(rt, "mql", T0 + timedelta(minutes=10))
    assert [line["key"] for line in _lines(rt)] == ["1:to_sales"]


def test_a_crm_call_a_run_died_in_is_taken_over_once_its_claim_is_stale(make_runtime, store, slow_crm):
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "slow_crm"
    cid = subscriber(store, "kim@firm.example", score=65)
    add_event(store, cid, "demo_request", T0)
    slow_crm.die_next = True
    with pytest.raises(Died):
        run_tick(rt, "mql", T0 + timedelta(minutes=5))
    [h] = _handovers(store)
    assert (h.status, h.attempts) == ("pending", 0) and h.claim is not None  # committed before the call
    assert retry_pending(rt, T0 + timedelta(minutes=10)) == {}  # a live run's claim is left alone
    _age_claims(store)
    assert retry_pending(rt, T0 + timedelta(hours=1)) == {"delivered": 1}
    # the CRM is told it may have had it already (HubSpot looks for the task by its key)
    assert (slow_crm.calls, slow_crm.redelivered) == ([["1:to_sales"], ["1:to_sales"]], ["1:to_sales"])
    [h] = _handovers(store)
    assert (h.status, h.attempts, h.claim) == ("delivered", 1, None)
    assert retry_pending(rt, T0 + timedelta(hours=2)) == {}


def test_a_line_written_by_a_run_that_died_before_recording_it_is_not_written_again(make_runtime, store, monkeypatch):
    rt = make_runtime({"mql": MQL_JOURNEY})
    for name in ("kim", "lou"):
        add_event(store, subscriber(store, f"{name}@firm.example", score=65), "demo_request", T0)

    def dies(*args, **kwargs):  # the lines are written; the process dies before the record
        raise Died()
    real_record = handover._record_outcomes
    monkeypatch.setattr(handover, "_record_outcomes", dies)
    with pytest.raises(Died):
        run_tick(rt, "mql", T0 + timedelta(minutes=5))
    with open(rt.data_dir / "handover" / "handovers.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"handover_id": 3, "key": "3:to_s')  # and a third line it was cut off in
    assert [(h.status, h.claim is not None) for h in _handovers(store)] == [("pending", True)] * 2
    monkeypatch.setattr(handover, "_record_outcomes", real_record)
    _age_claims(store)
    assert retry_pending(rt, T0 + timedelta(hours=1)) == {"delivered": 2}
    lines = (rt.data_dir / "handover" / "handovers.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines if line.endswith("}")] == ["1:to_sales", "2:to_sales"]
    assert len(lines) == 3  # the cut-off line stays apart, not glued to a new one
    assert [h.status for h in _handovers(store)] == ["delivered", "delivered"]


def test_a_handover_erased_while_its_delivery_runs_stays_failed(make_runtime, store, slow_crm):
    from nurture.privacy.erase import erase_emails
    from nurture.registry import IntegrationContext
    rt = make_runtime({"mql": MQL_JOURNEY})
    rt.env["NURTURE_HANDOVER_CRM"] = "slow_crm"
    add_event(store, subscriber(store, "kim@firm.example", score=65), "demo_request", T0)
    slow_crm.delay = 1.0
    tick = threading.Thread(target=run_tick, args=(rt, "mql", T0 + timedelta(minutes=5)))
    tick.start()
    assert slow_crm.started.wait(30)
    context = IntegrationContext(rt.project.root, rt.data_dir, dict(rt.env))
    erase_emails(rt.store, rt.project, ["kim@firm.example"], context=context, actor="test", now=T0)
    tick.join()
    [h] = _handovers(store)
    assert (h.status, h.reason) == ("failed", "erased")  # the run's record does not overwrite it
