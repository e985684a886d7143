"""The `handover` step: an MQL goes to sales.

For the enrollments arriving at the step, in the step's transaction: a `handover` row per
(enrollment, step) — unique, so a retried tick never hands over twice — claimed by this run,
the contact's lifecycle stage raised to the step's `stage` (never lowered), and the
enrollments moved on. Only once that has committed is the handover delivered, outside any
write transaction (a slow CRM holds up no other writer, and a step that failed has sent
nothing): to the CRM integration named by `NURTURE_HANDOVER_CRM` (a registered `crm`
integration with a `hand_over(records)` method), otherwise appended to
`<data_dir>/handover/handovers.jsonl`. Each record carries the contact with its stage (its own
or the step's, the later one) and its current score, and a sales task due `sla` later. The
outcomes are then recorded in a short transaction of their own.

A claim (`claim`, `claimed_at` on the row) is what keeps a handover from being delivered twice:
`retry_pending` claims only pending rows nobody holds, locking them on PostgreSQL. A run that
dies between its claim and its record leaves the claim behind; once it is CLAIM_TTL old
another run takes the handover over, as a `redelivery`: HubSpot finds the task an earlier
attempt created by its key, the file destination the line it wrote.

A holdout member (the journey's control group: enrolled, never acted on) is not handed over:
`hold_out` gives it a row with status `holdout` — the step's log, as a holdout send has its
`holdout` row in the message log — and moves it on, with no stage change and no delivery. That
row is never claimed nor delivered, and is no handover: the report's handover figures and its
MQLs per source leave it out.

A failed delivery is recorded on its row (`pending` with the reason, retried by
`retry_pending` up to MAX_ATTEMPTS, then `failed`) — never dropped. A refusal for the
destination's configuration (`HandoverResult.waiting`: no such CRM, no token, a HubSpot
property not created yet) uses up no attempt: the handover stays pending until it is fixed.
Contact within the SLA is measured from `sales_contacted` events (see docs/scoring.md and
nurture.reporting).
"""
from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from sqlalchemy import bindparam, or_, select

from nurture.registry import IntegrationContext, IntegrationError, lookup
from nurture.lifecycle import promote, stage_rank
from nurture.runtime.sql import chunks, for_update, ids_in, insert_ignore
from nurture.scoring.spec import handover_spec
from nurture.steps.transitions import move
from nurture.store.models import HOLDOUT
from nurture.store.tables import contact_t, handover_t

MAX_ATTEMPTS = 5
FILE_DESTINATION = "file"
# How long a run's claim protects the handovers it is delivering: longer than any delivery
# takes (HubSpot: a task request per handover, rate-limit waits, retries with backoff) and
# shorter than the hour between two scoring runs, so a claim a crash left is retried by the next.
CLAIM_TTL = timedelta(minutes=30)


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
    # An earlier run claimed it and recorded no outcome (it died): it may have arrived, so a
    # destination without its own deduplication looks for it first.
    redelivery: bool = False


@dataclass(frozen=True)
class HandoverResult:
    handover_id: int
    ok: bool
    external_id: Optional[str] = None
    reason: Optional[str] = None
    retry: bool = True  # a failure worth retrying (network, 5xx) or not (bad data)
    # Refused for the destination's configuration (a missing property, a refused token): it
    # stays pending without using up an attempt until someone fixes the configuration.
    waiting: bool = False


@dataclass
class Claim:
    """The pending handovers one delivery run holds: its token, their ids in order, the
    attempts each had, and those taken over from a run that died (`redelivery`)."""
    token: str
    ids: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    redelivery: set[int] = field(default_factory=set)

    def add(self, handover_id: int, attempts: int, redelivery: bool = False) -> None:
        self.ids.append(handover_id)
        self.attempts[handover_id] = attempts
        if redelivery:
            self.redelivery.add(handover_id)


def _wall_clock() -> datetime:
    # Claims are about live processes, not the engine's logical `now` (`--now`, simulations).
    return datetime.now(timezone.utc)


class FileHandover:
    """The fallback destination: one JSON line per handover."""
    name = FILE_DESTINATION

    def __init__(self, path: Path):
        self.path = path

    def hand_over(self, records: Sequence[HandoverRecord]) -> list[HandoverResult]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = self._written({r.key for r in records if r.redelivery})
        with open(self.path, "a", encoding="utf-8") as fh:
            self._end_line(fh)
            for r in records:
                if r.key in written:  # the line of a run that died before recording it
                    continue
                data = asdict(r)
                fh.write(json.dumps({"handover_id": r.handover_id, "key": r.key, "journey": r.journey,
                                     "contact": {k: data[k] for k in ("email", "first_name", "last_name", "phone",
                                                                      "company", "lifecycle_stage", "score")},
                                     "task": {"title": r.task_title, "due_at": r.task_due_at, "owner": r.owner,
                                              "note": r.note}}, sort_keys=True) + "\n")
        return [HandoverResult(r.handover_id, True, external_id=r.key) for r in records]

    def _written(self, keys: set[str]) -> set[str]:
        """Which of `keys` already have a line (read only after a crash: a redelivery)."""
        if not keys or not self.path.exists():
            return set()
        found = set()
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    key = json.loads(line).get("key")
                except ValueError:  # a line cut short by the crash: not delivered
                    continue
                if key in keys:
                    found.add(key)
        return found

    def _end_line(self, fh: Any) -> None:
        """A line a crash cut short is ended, so the next one is not glued onto it."""
        if fh.tell() > 0:
            with open(self.path, "rb") as raw:
                raw.seek(-1, 2)
                if raw.read(1) != b"\n":
                    fh.write("\n")


def destination_for(rt: Any) -> Any:
    """The configured CRM (NURTURE_HANDOVER_CRM) or the JSONL file under the data directory."""
    name = rt.settings.handover_crm
    if not name:
        return FileHandover(rt.data_dir / "handover" / "handovers.jsonl")
    cls = lookup(name, "crm")
    if not callable(getattr(cls, "hand_over", None)):
        raise IntegrationError(f"the CRM integration '{name}' cannot take handovers (it has no hand_over method)")
    return cls.from_env(IntegrationContext(rt.project.root, rt.data_dir, rt.env))


def _stage_label(stage: str) -> str:
    return {"mql": "MQL", "sql": "SQL"}.get(stage, stage)


def _records(conn: Any, claim: Claim) -> list[HandoverRecord]:
    """What the claimed rows still pending hand over: the contact as it is now — the higher
    of its own stage and the step's (a customer handed over stays a customer) and its current
    score (a retry hours later sends today's, not the one of the first attempt)."""
    out = []
    for part in chunks(claim.ids):
        rows = conn.execute(
            select(handover_t, contact_t.c.email, contact_t.c.first_name, contact_t.c.last_name,
                   contact_t.c.phone, contact_t.c.attributes, contact_t.c.lifecycle_stage.label("current_stage"),
                   contact_t.c.score.label("current_score"))
            .select_from(handover_t.join(contact_t, contact_t.c.id == handover_t.c.contact_id))
            .where(ids_in(handover_t.c.id, part), handover_t.c.claim == claim.token,
                   handover_t.c.status == "pending")  # (erased meanwhile: `failed`, never delivered)
            .order_by(handover_t.c.id)).mappings().all()
        for r in rows:
            attrs = dict(r["attributes"] or {})
            name = " ".join(p for p in (r["first_name"], r["last_name"]) if p) or r["email"] or f"contact {r['contact_id']}"
            stage = max((r["stage"], r["current_stage"] or "lead"), key=stage_rank)
            score = round(float(r["current_score"] or 0.0), 2)
            out.append(HandoverRecord(
                handover_id=r["id"], key=f"{r['enrollment_id']}:{r['step_id']}", email=r["email"],
                first_name=r["first_name"], last_name=r["last_name"], phone=r["phone"],
                company=attrs.get("company"), lifecycle_stage=stage, score=score,
                task_title=f"Contact {_stage_label(stage)} {name} (score {score:.0f})",
                task_due_at=r["sla_due_at"].isoformat(), owner=r["owner"], note=r["note"],
                journey=r["journey"], attributes=attrs, redelivery=r["id"] in claim.redelivery))
    return out


def _hand_over(rt: Any, records: list[HandoverRecord]) -> dict[int, HandoverResult]:
    """The destination's result per record (no database transaction is open meanwhile)."""
    destination = None
    try:
        destination = destination_for(rt)
        return {r.handover_id: r for r in destination.hand_over(records)}
    except IntegrationError as exc:  # a configuration to fix (no such CRM, no token): wait for it
        return {r.handover_id: HandoverResult(r.handover_id, False, reason=str(exc)[:300], waiting=True)
                for r in records}
    except Exception as exc:  # the destination as a whole failed: every record stays pending
        reason = f"{type(exc).__name__}: {exc}"[:300]
        return {r.handover_id: HandoverResult(r.handover_id, False, reason=reason) for r in records}
    finally:  # a CRM integration holds an HTTP client (connections) until closed
        if callable(getattr(destination, "close", None)):
            destination.close()


_RECORD = (handover_t.update()
           .where(handover_t.c.id == bindparam("hid"), handover_t.c.claim == bindparam("token"),
                  handover_t.c.status == "pending")
           .values(status=bindparam("st"), reason=bindparam("rs"), external_id=bindparam("ext"),
                   attempts=bindparam("n"), delivered_at=bindparam("at"), claim=None, claimed_at=None))


def _record_outcomes(conn: Any, claim: Claim, records: list[HandoverRecord], results: dict[int, HandoverResult],
                     now: datetime) -> Counter:
    """Each outcome on its row, and the claim released — only on rows this run still holds
    (an erasure meanwhile made its row `failed`, and that stays)."""
    report: Counter = Counter()
    updates = []
    for record in records:
        result = results.get(record.handover_id) or HandoverResult(record.handover_id, False,
                                                                    reason="no result from destination")
        attempts = claim.attempts[record.handover_id] + (0 if result.waiting else 1)
        if result.ok:
            status = "delivered"
        elif result.waiting or (result.retry and attempts < MAX_ATTEMPTS):
            status = "pending"
        else:
            status = "failed"
        report[status] += 1
        updates.append({"hid": record.handover_id, "token": claim.token, "st": status, "rs": result.reason,
                        "ext": result.external_id, "n": attempts, "at": now if result.ok else None})
    if updates:
        conn.execute(_RECORD, updates)
    return report


def deliver_claimed(rt: Any, claim: Claim, now: datetime) -> Counter:
    """Deliver the handovers `claim` holds (committed before: no write transaction is open)
    and record each outcome in a short transaction of its own."""
    if not claim.ids:
        return Counter()
    with rt.store.reading() as conn:
        records = _records(conn, claim)
    if not records:
        return Counter()
    results = _hand_over(rt, records)
    with rt.store.engine.begin() as conn:
        return _record_outcomes(conn, claim, records, results, now)


def hand_over(conn: Any, rt: Any, plan: Any, node: Any, rows: list[tuple], now: datetime) -> Claim:
    """The `handover` step for a batch of due enrollments outside the holdout (rows: eid,
    contact id, tz, at), in the step's transaction: the stage raised, a handover row per
    enrollment claimed by this run, and the enrollments moved on. Delivered by
    `deliver_claimed` once that transaction has committed, in the order the contacts entered
    the journey (the batch's own order is the database's: on PostgreSQL it follows where the
    rows' latest versions lie)."""
    rows = sorted(rows, key=lambda row: row[0])
    claim = Claim(uuid.uuid4().hex)
    if not rows:
        return claim
    spec = handover_spec(node.step.handover)
    contact_ids = sorted({r[1] for r in rows})
    # forward only (a handed-over SQL stays SQL), recorded as a lifecycle_stage_changed event
    promote(conn, spec.stage, ids_in(contact_t.c.id, contact_ids), now, source=f"handover:{plan.name}")
    _insert_rows(conn, rt, plan, node, rows, status="pending", claim=claim)
    for part in chunks([r[0] for r in rows]):
        for hid, attempts in conn.execute(select(handover_t.c.id, handover_t.c.attempts).where(
                handover_t.c.enrollment_id.in_(part), handover_t.c.step_id == node.id,
                handover_t.c.claim == claim.token)):
            claim.add(hid, attempts)
    move(conn, rt, plan, rows, node.next, now)
    return claim


def hold_out(conn: Any, rt: Any, plan: Any, node: Any, rows: list[tuple], now: datetime) -> int:
    """The `handover` step for a batch of due holdout members (rows as `hand_over`'s), in the
    step's transaction: sales calling the control group would act on it as surely as a
    message, and the lift would measure the journey against people it handed over. So: a
    `holdout` row each (what would have been handed over, when — never claimed, never
    delivered), no stage change, and the enrollments moved on; how many."""
    if not rows:
        return 0
    _insert_rows(conn, rt, plan, node, sorted(rows, key=lambda row: row[0]), status=HOLDOUT, claim=None)
    return move(conn, rt, plan, rows, node.next, now)


def _insert_rows(conn: Any, rt: Any, plan: Any, node: Any, rows: list[tuple], status: str,
                 claim: Optional[Claim]) -> None:
    """A handover row per enrollment (unique per (enrollment, step): a retried tick writes
    none twice), with the contact's score now; `claim` holds it for this run's delivery."""
    spec = handover_spec(node.step.handover)
    scores = {}
    for part in chunks(sorted({r[1] for r in rows})):
        scores.update(dict(conn.execute(select(contact_t.c.id, contact_t.c.score).where(contact_t.c.id.in_(part))).all()))
    destination = rt.settings.handover_crm or FILE_DESTINATION
    wall = _wall_clock() if claim is not None else None
    insert_ignore(conn, handover_t, [dict(contact_id=cid, enrollment_id=eid, journey=plan.name, step_id=node.id,
                                          stage=spec.stage, score=float(scores.get(cid) or 0.0), owner=spec.owner,
                                          note=spec.note, destination=destination, status=status,
                                          reason=HOLDOUT if status == HOLDOUT else None,
                                          external_id=None, attempts=0, sla_due_at=at + spec.sla, created_at=at,
                                          delivered_at=None, claim=claim.token if claim is not None else None,
                                          claimed_at=wall)
                                     for eid, cid, _, at in rows], ("enrollment_id", "step_id"))


def claim_pending(conn: Any) -> Claim:
    """Claim every pending handover nobody holds — waiting for a retry, or held by a claim
    older than CLAIM_TTL (its run died between the claim and the outcome). On PostgreSQL the
    rows are locked, skipping those another run is claiming, so two runs never claim one
    handover; SQLite's write transaction serializes the runs."""
    wall = _wall_clock()
    claim = Claim(uuid.uuid4().hex)
    stmt = for_update(select(handover_t.c.id, handover_t.c.attempts, handover_t.c.claim).where(
        handover_t.c.status == "pending",
        or_(handover_t.c.claim.is_(None), handover_t.c.claimed_at < wall - CLAIM_TTL)).order_by(handover_t.c.id),
        conn, skip_locked=True)
    for hid, attempts, held in conn.execute(stmt):
        claim.add(hid, attempts, redelivery=held is not None)
    for part in chunks(claim.ids):
        conn.execute(handover_t.update().where(ids_in(handover_t.c.id, part))
                     .values(claim=claim.token, claimed_at=wall))
    return claim


def retry_pending(rt: Any, now: datetime) -> Counter:
    """Handovers whose delivery failed or was never recorded: claim them (committed), then
    deliver them again outside the transaction (the scoring flow calls this)."""
    with rt.store.engine.begin() as conn:
        claim = claim_pending(conn)
    return deliver_claimed(rt, claim, now)
