"""The one send transaction: for the next batch of enrollments whose `send` step is due, the
five checks of the send pipeline, the outbox insert and the move to the next step, in one
transaction opened here.

The checks themselves are nurture.send.guards.pipeline (the same ones every later delivery
attempt meets again in nurture.send.deliver's claim). Serialization per contact: on
PostgreSQL the batch's contact rows are locked (`FOR UPDATE`, in id order, so two workers
cannot deadlock) before the cap history is read; SQLite's `BEGIN IMMEDIATE` already makes the
whole transaction exclusive. Either way two ticks at once cannot both pass a cap, and the
unique (enrollment, step, attempt) key makes a double insert impossible anyway.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, NamedTuple, Optional

from sqlalchemy import bindparam, select

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.gc_pause import gc_paused
from nurture.runtime.sql import ids_in, insert_ignore, write_many
from nurture.send.guards.pipeline import Recipient, address_of, check_batch, lock_contacts
from nurture.steps.transitions import Row, due_rows, move
from nurture.store.models import DEFERRED, QUEUED
from nurture.store.tables import contact_t, enrollment_t, message_t


_defer = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
          .values(next_due_at=bindparam("due"), defer_count=bindparam("defers")))


class _Due(NamedTuple):
    id: int
    contact_id: int
    next_due_at: datetime
    holdout: bool
    defer_count: int
    email: Optional[str]
    phone: Optional[str]
    timezone: Optional[str]
    attributes: Optional[dict]


def queue_due(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    """The send transaction for the next batch of enrollments due at send step `node`: each
    gets its outcome (queued for delivery, or holdout / suppressed / skipped / deferred with a
    reason) as a `message` row, counted in `report`, and moves on — except a deferred one,
    which stays at the step until its new due time. False when none was due."""
    with gc_paused(), rt.store.engine.begin() as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        _guard_and_queue(conn, rt, plan, node, [r[0] for r in rows], now, report)
        return True


def _guard_and_queue(conn: Any, rt: Runtime, plan: Plan, node: Node, enrollment_ids: list[int],
                     now: datetime, report: Counter) -> None:
    send = node.step.send
    channel, purpose = send.channel, send.purpose
    rows = conn.execute(
        select(enrollment_t.c.id, enrollment_t.c.contact_id, enrollment_t.c.next_due_at, enrollment_t.c.holdout,
               enrollment_t.c.defer_count, contact_t.c.email, contact_t.c.phone, contact_t.c.timezone,
               contact_t.c.attributes)
        .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
        .where(ids_in(enrollment_t.c.id, enrollment_ids))).all()
    rows = [_Due._make(r) for r in rows]  # SQLAlchemy Row attributes cost ~1 µs each
    lock_contacts(conn, [r.contact_id for r in rows])
    rules = rt.send_rules(plan, channel, purpose)
    verdicts = check_batch(conn, rules, [Recipient(r.contact_id, r.email, r.phone, r.timezone, r.attributes, r.holdout)
                                         for r in rows], now)
    final: list[dict] = []
    deferred: list[dict] = []
    moves: list[Row] = []
    deferrals: list[dict] = []
    marketing = rules.marketing
    for r, (status, reason, due) in zip(rows, verdicts):
        due = due or r.next_due_at
        report[(node.id, status, reason)] += 1
        row = dict(enrollment_id=r.id, contact_id=r.contact_id, journey=plan.name, step_id=node.id,
                   channel=channel, purpose=purpose, template=send.template,
                   address=address_of(channel, r.email, r.phone),
                   status=status, reason=reason, due_at=due, created_at=now, attempts=0,
                   counted_at=now if status == QUEUED and marketing else None,
                   attempt_key=f"defer:{r.defer_count + 1}" if status == DEFERRED else "send")
        if status == DEFERRED:
            deferred.append(row)
            deferrals.append({"eid": r.id, "due": due, "defers": r.defer_count + 1})
        else:
            final.append(row)
            # The journey goes on from the moment the message went out (or was refused).
            moves.append((r.id, r.contact_id, r.timezone, max(now, r.next_due_at)))
    insert_ignore(conn, message_t, final + deferred, ("enrollment_id", "step_id", "attempt_key"))
    write_many(conn, _defer, deferrals)
    move(conn, rt, plan, moves, node.next, now)
