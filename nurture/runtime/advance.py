"""Advancing enrollments through their steps, set-based and in topological order.

Nodes are visited in plan order (every edge points forward), so one pass carries a contact
through as many instant steps as are due. Each node is processed in batches: one query
selects the due enrollments at that node, the transition is written with one executemany.
`send` nodes hand their batch to the outbox (guards + outbox insert in one transaction).

The logical time of an enrollment is its `next_due_at`: a wait of 1h after an event at
10:02 ends at 11:02, whichever tick notices it.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
import json
from typing import Any, Iterable, Optional

from sqlalchemy import String, and_, bindparam, cast, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB

from nurture.compiler import Node, Plan
from nurture.conditions import ConditionScope, compile_condition, contact_t, enrollment_t, event_t, properties_match
from nurture.runtime.context import Runtime
from nurture.runtime.gc_pause import gc_paused
from nurture.runtime.timing import arrival_due
from nurture.runtime.outbox import guard_and_queue
from nurture.runtime.sql import ids_in, chunks, write_many
from nurture.runtime.stable_random import pick_arm

# (enrollment id, contact id, contact time zone, logical time)
Row = tuple[int, int, Optional[str], datetime]

_move = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
         .values(step_id=bindparam("sid"), next_due_at=bindparam("due"), step_entered_at=bindparam("at")))
_finish = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
           .values(step_id=None, next_due_at=None, status="completed", left_at=bindparam("at")))


def move(conn: Any, rt: Runtime, plan: Plan, rows: Iterable[Row], target: Optional[str], now: datetime) -> int:
    rows = list(rows)
    if not rows:
        return 0
    if target is None:
        write_many(conn, _finish, [{"eid": eid, "at": now} for eid, _, _, _ in rows])
        return len(rows)
    node = plan.nodes[target]
    default_tz = rt.project.policies.timezone
    write_many(conn, _move, [{"eid": eid, "sid": target, "at": at, "due": arrival_due(node, at, tz, default_tz)}
                             for eid, _, tz, at in rows])
    return len(rows)


def _due_rows(conn: Any, plan: Plan, node: Node, now: datetime, limit: int, extra: Any = None,
              due_only: bool = True) -> list[Row]:
    filters = [enrollment_t.c.journey == plan.name, enrollment_t.c.status == "active",
               enrollment_t.c.step_id == node.id]
    if due_only:
        filters.append(enrollment_t.c.next_due_at <= now)
    if extra is not None:
        filters.append(extra)
    stmt = (select(enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone, enrollment_t.c.next_due_at)
            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
            # next_due_at order comes straight from ix_enrollment_due: no sort of the whole
            # backlog for every batch (ordering by id made a large tick quadratic).
            .where(*filters).order_by(enrollment_t.c.next_due_at).limit(limit))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=enrollment_t, skip_locked=True)
    return [tuple(r) for r in conn.execute(stmt)]


def _scope(rt: Runtime, now: datetime) -> ConditionScope:
    return ConditionScope(now, rt.project.segments, in_enrollment=True)


def _process_node(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> None:
    kind = node.kind
    while True:
        with gc_paused(), rt.store.engine.begin() as conn:
            if kind == "send":
                rows = _due_rows(conn, plan, node, now, rt.batch_size)
                if not rows:
                    return
                guard_and_queue(conn, rt, plan, node, [r[0] for r in rows], now, report)
                continue
            if kind == "wait_for":
                spec = node.step.wait_for
                ev = event_t.alias("ev_wait")
                happened = exists(select(ev.c.id).where(
                    ev.c.contact_id == enrollment_t.c.contact_id, ev.c.name == spec.event,
                    ev.c.occurred_at >= enrollment_t.c.step_entered_at, ev.c.occurred_at <= now,
                    properties_match(ev.c.properties, spec.where) if spec.where else and_(True)))
                rows = _due_rows(conn, plan, node, now, rt.batch_size, happened, due_only=False)
                if rows:
                    move(conn, rt, plan, [(e, c, tz, now) for e, c, tz, _ in rows], node.then_first, now)
                    report[(node.id, "event_received", None)] += len(rows)
                    continue
                rows = _due_rows(conn, plan, node, now, rt.batch_size)
                if not rows:
                    return
                move(conn, rt, plan, rows, node.else_first, now)
                report[(node.id, "timed_out", None)] += len(rows)
                continue
            rows = _due_rows(conn, plan, node, now, rt.batch_size)
            if not rows:
                return
            if kind == "branch":
                ids = [r[0] for r in rows]
                cond = compile_condition(node.step.branch.when, _scope(rt, now))
                matched: set[int] = set()
                for part in chunks(ids):
                    matched.update(r[0] for r in conn.execute(
                        select(enrollment_t.c.id)
                        .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
                        .where(ids_in(enrollment_t.c.id, part), cond)))
                then_rows = [r for r in rows if r[0] in matched]
                else_rows = [r for r in rows if r[0] not in matched]
                move(conn, rt, plan, then_rows, node.then_first, now)
                move(conn, rt, plan, else_rows, node.else_first, now)
                report[(node.id, "then", None)] += len(then_rows)
                report[(node.id, "else", None)] += len(else_rows)
            elif kind == "split":
                by_arm: dict[str, list[Row]] = {}
                targets: dict[str, Optional[str]] = {}
                for row in rows:
                    name, _, first = pick_arm(plan.name, node.id, row[1], node.arms)
                    by_arm.setdefault(name, []).append(row)
                    targets[name] = first
                for name, arm_rows in by_arm.items():
                    move(conn, rt, plan, arm_rows, targets[name], now)
                    report[(node.id, f"arm:{name}", None)] += len(arm_rows)
            elif kind == "update":
                _apply_update(conn, node, [r[1] for r in rows], now)
                move(conn, rt, plan, rows, node.next, now)
                report[(node.id, "updated", None)] += len(rows)
            elif kind == "handover":
                from nurture.scoring.handover import hand_over
                hand_over(conn, rt, plan, node, rows, now, report)
            elif kind == "exit":
                conn.execute(enrollment_t.update().where(enrollment_t.c.id == bindparam("eid")).values(
                    status="exited", step_id=None, next_due_at=None, left_at=bindparam("at"),
                    exit_reason=node.step.exit.reason), [{"eid": r[0], "at": now} for r in rows])
                report[(node.id, "exited", node.step.exit.reason)] += len(rows)
            else:  # wait, wait_until: the time has come
                move(conn, rt, plan, rows, node.next, now)
                report[(node.id, "waited", None)] += len(rows)


def merged_attributes(conn: Any, values: dict) -> Any:
    """`attributes` with `values` merged in, as one SQL expression for a whole batch."""
    patch = bindparam("attributes_patch", json.dumps(values), type_=String)
    if conn.dialect.name == "postgresql":
        return contact_t.c.attributes.op("||")(cast(patch, JSONB))
    return func.json_patch(contact_t.c.attributes, patch)


def _apply_update(conn: Any, node: Node, contact_ids: list[int], now: datetime) -> None:
    spec = node.step.update
    for part in chunks(sorted(set(contact_ids))):
        if spec.lifecycle_stage:
            conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part))
                         .values(lifecycle_stage=spec.lifecycle_stage, updated_at=now))
        if spec.attributes:
            conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part))
                         .values(attributes=merged_attributes(conn, spec.attributes), updated_at=now))


def advance(rt: Runtime, plan: Plan, now: datetime) -> Counter:
    report: Counter = Counter()
    for step_id in plan.order:
        _process_node(rt, plan, plan.nodes[step_id], now, report)
    return report
