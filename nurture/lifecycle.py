"""The lifecycle stages of a contact, in order, and the record of when a contact reached each.

A contact only moves forward through STAGES (scoring, the `update` step, a hand-over, later the
CRM pull). Every forward move is written as one `lifecycle_stage_changed` event
`{from, to, source}` with the deterministic event id `lifecycle:<contact>:<to>`, inserted
with insert-or-ignore: the first time a contact reached a stage is recorded once and never
overwritten, so the report can date MQLs, SQLs and customers (nurture.reporting.sources).

A bottom module: it imports only the table handles and the SQL building blocks, so scoring,
the step kinds and the CRM pull can all import it without a cycle.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Optional

from sqlalchemy import func, select

from nurture.runtime.sql import chunks, ids_in, insert_ignore
from nurture.store.event_order import writing_events
from nurture.store.tables import contact_t, event_t

# The one stage order. Issue 13's `opportunity` goes between sql and customer — here only.
STAGES: tuple[str, ...] = ("lead", "mql", "sql", "opportunity", "customer")
STAGE_CHANGED = "lifecycle_stage_changed"


def stage_rank(stage: Optional[str]) -> int:
    """A stage's position in STAGES; a stage outside them (`engaged`, a typo) counts as a lead."""
    return STAGES.index(stage) if stage in STAGES else 0


def at_or_beyond(stage: str) -> tuple[str, ...]:
    """The stages a contact that reached `stage` may be in."""
    return STAGES[STAGES.index(stage):]


def before(stage: str) -> tuple[str, ...]:
    """The stages a contact moves forward from when it reaches `stage`."""
    return STAGES[:STAGES.index(stage)]


def stage_changed_event_id(contact_id: int, to: str) -> str:
    return f"lifecycle:{int(contact_id)}:{to}"


def record_stage_changes(conn: Any, rows: Iterable[tuple[int, Optional[str]]], to: str, now: datetime,
                         source: str) -> int:
    """One `lifecycle_stage_changed` event per (contact id, previous stage) in `rows` that moves
    forward to `to`; a stage the contact reached before keeps its first record. How many rows
    moved forward (recorded now or earlier)."""
    if to not in STAGES:
        return 0
    forward = [(int(cid), stage or "lead") for cid, stage in rows if stage_rank(stage) < stage_rank(to)]
    if forward:
        writing_events(conn)  # (store.event_order)
    insert_ignore(conn, event_t, [dict(event_id=stage_changed_event_id(cid, to), contact_id=cid,
                                       name=STAGE_CHANGED, properties={"from": stage, "to": to, "source": source},
                                       occurred_at=now, received_at=now) for cid, stage in forward],
                  ("event_id",))
    return len(forward)


def promote(conn: Any, to: str, condition: Any, now: datetime, source: str) -> int:
    """Move every contact before `to` that matches `condition` (SQL over contact_t) to `to`,
    recording the change: the ids are selected, updated and recorded in the caller's
    transaction. How many moved."""
    stage = func.coalesce(contact_t.c.lifecycle_stage, "lead")
    rows = conn.execute(select(contact_t.c.id, stage).where(stage.in_(before(to)), condition)).all()
    for part in chunks([r[0] for r in rows]):
        conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part), stage.in_(before(to)))
                     .values(lifecycle_stage=to, updated_at=now))
    record_stage_changes(conn, rows, to, now, source)
    return len(rows)


def set_stage(conn: Any, contact_ids: Iterable[int], to: str, now: datetime, source: str) -> None:
    """Set the stage of `contact_ids` to `to` as told (an `update` step may also move a contact
    back, or to a stage of its own), recording the ones that moved forward."""
    ids = sorted(set(contact_ids))
    for part in chunks(ids):
        rows = conn.execute(select(contact_t.c.id, contact_t.c.lifecycle_stage)
                            .where(ids_in(contact_t.c.id, part))).all()
        conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part)).values(lifecycle_stage=to, updated_at=now))
        record_stage_changes(conn, rows, to, now, source)
