"""The `handover` step: an MQL goes to sales.

For the enrollments arriving at the step, in the step's transaction: a `handover` row per
(enrollment, step) — unique, so a retried tick never hands over twice — the contact's
lifecycle stage raised to the step's `stage` (never lowered), and the handover delivered:
to the CRM integration named by `NURTURE_HANDOVER_CRM` (a registered `crm` integration with a
`hand_over(records)` method), otherwise appended to `<data_dir>/handover/handovers.jsonl`.
Each record carries the contact with stage and score and a sales task due `sla` later.

A failed delivery is recorded on its row (`pending` with the reason, retried by
`retry_pending` up to MAX_ATTEMPTS, then `failed`) — never dropped. Contact within the SLA is
measured from `sales_contacted` events (see docs/scoring.md and nurture.reporting).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from sqlalchemy import bindparam, select

from nurture.registry import IntegrationContext, IntegrationError, lookup
from nurture.lifecycle import promote
from nurture.runtime.sql import chunks, ids_in, insert_ignore
from nurture.scoring.spec import handover_spec
from nurture.steps.transitions import move
from nurture.store.tables import contact_t, handover_t

MAX_ATTEMPTS = 5
FILE_DESTINATION = "file"


@dataclass(frozen=True)
class HandoverRecord:
    """What a CRM receives: the contact (upsert by e-mail) with stage and score, and a task."""
    handover_id: int
    key: str  # "<enrollment id>:<step id>": stable, for deduplication downstream
    email: Optional[str]
    first_name: Optional[str]
    last_name: Optional[str]
    phone: Optional[str]
    company: Optional[str]
    lifecycle_stage: str
    score: float
    task_title: str
    task_due_at: str  # ISO 8601 UTC
    owner: Optional[str] = None
    note: str = ""
    journey: str = ""
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HandoverResult:
    handover_id: int
    ok: bool
    external_id: Optional[str] = None
    reason: Optional[str] = None
    retry: bool = True  # a failure worth retrying (network, 5xx) or not (bad data)


class FileHandover:
    """The fallback destination: one JSON line per handover."""
    name = FILE_DESTINATION

    def __init__(self, path: Path):
        self.path = path

    def hand_over(self, records: Sequence[HandoverRecord]) -> list[HandoverResult]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for r in records:
                data = asdict(r)
                fh.write(json.dumps({"handover_id": r.handover_id, "key": r.key, "journey": r.journey,
                                     "contact": {k: data[k] for k in ("email", "first_name", "last_name", "phone",
                                                                      "company", "lifecycle_stage", "score")},
                                     "task": {"title": r.task_title, "due_at": r.task_due_at, "owner": r.owner,
                                              "note": r.note}}, sort_keys=True) + "\n")
        return [HandoverResult(r.handover_id, True, external_id=r.key) for r in records]


def destination_for(rt: Any) -> Any:
    """The configured CRM (NURTURE_HANDOVER_CRM) or the JSONL file under the data directory."""
    name = rt.settings.handover_crm
    if not name:
        return FileHandover(rt.data_dir / "handover" / "handovers.jsonl")
    cls = lookup(name, "crm")
    if not callable(getattr(cls, "hand_over", None)):
        raise IntegrationError(f"the CRM integration '{name}' cannot take handovers (it has no hand_over method)")
    return cls.from_env(IntegrationContext(rt.project.root, rt.data_dir, rt.env))


def _records(conn: Any, ids: list[int]) -> list[HandoverRecord]:
    out = []
    for part in chunks(ids):
        rows = conn.execute(
            select(handover_t, contact_t.c.email, contact_t.c.first_name, contact_t.c.last_name,
                   contact_t.c.phone, contact_t.c.attributes, contact_t.c.lifecycle_stage.label("current_stage"),
                   contact_t.c.score.label("current_score"))
            .select_from(handover_t.join(contact_t, contact_t.c.id == handover_t.c.contact_id))
            .where(handover_t.c.id.in_(part)).order_by(handover_t.c.id)).mappings().all()
        for r in rows:
            attrs = dict(r["attributes"] or {})
            name = " ".join(p for p in (r["first_name"], r["last_name"]) if p) or r["email"] or f"contact {r['contact_id']}"
            out.append(HandoverRecord(
                handover_id=r["id"], key=f"{r['enrollment_id']}:{r['step_id']}", email=r["email"],
                first_name=r["first_name"], last_name=r["last_name"], phone=r["phone"],
                company=attrs.get("company"), lifecycle_stage=r["stage"], score=round(r["score"], 2),
                task_title=f"Contact MQL {name} (score {r['score']:.0f})",
                task_due_at=r["sla_due_at"].isoformat(), owner=r["owner"], note=r["note"],
                journey=r["journey"], attributes=attrs))
    return out


def deliver_handovers(conn: Any, rt: Any, ids: list[int], now: datetime) -> Counter:
    """Send the given handover rows to the destination and record each outcome."""
    report: Counter = Counter()
    if not ids:
        return report
    records = _records(conn, ids)
    destination = None
    try:
        destination = destination_for(rt)
        results = {r.handover_id: r for r in destination.hand_over(records)}
    except Exception as exc:  # the destination as a whole failed: every record stays pending
        reason = f"{type(exc).__name__}: {exc}"[:300]
        results = {r.handover_id: HandoverResult(r.handover_id, False, reason=reason) for r in records}
    finally:  # a CRM integration holds an HTTP client (connections) until closed
        if callable(getattr(destination, "close", None)):
            destination.close()
    updates = []
    for record in records:
        result = results.get(record.handover_id) or HandoverResult(record.handover_id, False,
                                                                    reason="no result from destination")
        attempts = conn.execute(select(handover_t.c.attempts).where(handover_t.c.id == record.handover_id)).scalar() + 1
        if result.ok:
            status = "delivered"
        elif result.retry and attempts < MAX_ATTEMPTS:
            status = "pending"
        else:
            status = "failed"
        report[status] += 1
        updates.append({"hid": record.handover_id, "st": status, "rs": result.reason, "ext": result.external_id,
                        "n": attempts, "at": now if result.ok else None})
    conn.execute(handover_t.update().where(handover_t.c.id == bindparam("hid"))
                 .values(status=bindparam("st"), reason=bindparam("rs"), external_id=bindparam("ext"),
                         attempts=bindparam("n"), delivered_at=bindparam("at")), updates)
    return report


def hand_over(conn: Any, rt: Any, plan: Any, node: Any, rows: list[tuple], now: datetime, report: Counter) -> None:
    """The `handover` step for a batch of due enrollments (rows: eid, contact id, tz, at), handed
    over in the order the contacts entered the journey (the batch's own order is the database's:
    on PostgreSQL it follows where the rows' latest versions lie)."""
    rows = sorted(rows, key=lambda row: row[0])
    spec = handover_spec(node.step.handover)
    contact_ids = sorted({r[1] for r in rows})
    # forward only (a handed-over SQL stays SQL), recorded as a lifecycle_stage_changed event
    promote(conn, spec.stage, ids_in(contact_t.c.id, contact_ids), now, source=f"handover:{plan.name}")
    scores = {}
    for part in chunks(contact_ids):
        scores.update(dict(conn.execute(select(contact_t.c.id, contact_t.c.score).where(contact_t.c.id.in_(part))).all()))
    destination = rt.settings.handover_crm or FILE_DESTINATION
    insert_ignore(conn, handover_t, [dict(contact_id=cid, enrollment_id=eid, journey=plan.name, step_id=node.id,
                                          stage=spec.stage, score=float(scores.get(cid) or 0.0), owner=spec.owner,
                                          note=spec.note, destination=destination, status="pending", reason=None,
                                          external_id=None, attempts=0, sla_due_at=at + spec.sla, created_at=at)
                                     for eid, cid, _, at in rows], ("enrollment_id", "step_id"))
    ids = []
    for part in chunks([r[0] for r in rows]):
        ids.extend(r[0] for r in conn.execute(select(handover_t.c.id).where(
            handover_t.c.enrollment_id.in_(part), handover_t.c.step_id == node.id,
            handover_t.c.status == "pending", handover_t.c.attempts == 0)))
    for status, n in deliver_handovers(conn, rt, ids, now).items():
        report[(node.id, "handover_" + status, None)] += n
    move(conn, rt, plan, rows, node.next, now)


def retry_pending(rt: Any, now: datetime) -> Counter:
    """Handovers whose delivery failed temporarily: try again (the scoring flow calls this)."""
    with rt.store.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(select(handover_t.c.id).where(
            handover_t.c.status == "pending", handover_t.c.attempts > 0).order_by(handover_t.c.id))]
        return deliver_handovers(conn, rt, ids, now)
