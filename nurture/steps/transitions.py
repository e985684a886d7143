"""Enrollment transitions, the bottom of the step kinds: which enrollments are due at a step
(`due_rows`), one step batch's transaction (`step_batch`), and moving enrollments on to their
next step or out of the journey at its end (`move`). Imports none of the step handlers.

The logical time of an enrollment is its `next_due_at`: a wait of 1h after an event at 10:02
ends at 11:02, whichever tick notices it; `move` computes where the next step is due
(nurture.runtime.timing).
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterable, Iterator, Optional, Sequence

from sqlalchemy import bindparam, exists, literal, select, union_all

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.gc_pause import gc_paused
from nurture.runtime.sql import prebuilt, write_many
from nurture.runtime.timing import arrival_due
from nurture.store.tables import contact_t, enrollment_t


# (enrollment id, contact id, contact time zone, logical time)
Row = tuple[int, int, Optional[str], datetime]

_move = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
         .values(step_id=bindparam("sid"), next_due_at=bindparam("due"), step_entered_at=bindparam("at")))
_move_marked = _move.values(state=bindparam("st"))  # with the enrollment's new state (the split's arm)
_finish = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
           .values(step_id=None, next_due_at=None, status="completed", left_at=bindparam("at")))
_finish_marked = _finish.values(state=bindparam("st"))


def move(conn: Any, rt: Runtime, plan: Plan, rows: Iterable[Row], target: Optional[str], now: datetime,
         states: Optional[dict[int, dict]] = None) -> int:
    """Move enrollments to step `target` (None: the journey's end, `completed`), each arriving
    at its own logical time; how many. `states`: enrollment id → its new `state`, written in
    the same statement (the split step records the arm taken)."""
    rows = list(rows)
    if not rows:
        return 0
    if target is None:
        stmt, values = _finish, [{"eid": eid, "at": now} for eid, _, _, _ in rows]
    else:
        node = plan.nodes[target]
        default_tz = rt.project.policies.timezone
        stmt, values = _move, [{"eid": eid, "sid": target, "at": at, "due": arrival_due(node, at, tz, default_tz)}
                               for eid, _, tz, at in rows]
    if states is not None:
        stmt = _finish_marked if target is None else _move_marked
        for value in values:
            value["st"] = states[value["eid"]]
    write_many(conn, stmt, values)
    return len(rows)


@contextmanager
def step_batch(rt: Runtime) -> Iterator[Any]:
    """One batch of a step: one write transaction, with the garbage collector paused for it
    (nurture.runtime.gc_pause)."""
    with gc_paused(), rt.store.engine.begin() as conn:
        yield conn


def due_rows(conn: Any, plan: Plan, node: Node, now: datetime, limit: int, extra: Any = None,
             due_only: bool = True) -> list[Row]:
    """Up to `limit` active enrollments at `node` (due by `now`, unless not `due_only`; and
    matching `extra`), oldest due first. On PostgreSQL they are locked, skipping rows another
    worker holds, so two workers never take the same enrollment."""
    postgres = conn.dialect.name == "postgresql"
    if due_only and extra is None:  # the common form, built once (nurture.runtime.sql.prebuilt)
        return [tuple(r) for r in claim_due(conn, plan, node, now, limit)]
    filters = [enrollment_t.c.journey == plan.name, enrollment_t.c.status == "active",
               enrollment_t.c.step_id == node.id]
    if due_only:
        filters.append(enrollment_t.c.next_due_at <= now)
    if extra is not None:
        filters.append(extra)
    return [tuple(r) for r in conn.execute(_due_rows_stmt(filters, limit, postgres))]


def claim_due(conn: Any, plan: Plan, node: Node, now: datetime, limit: int, key: str = "due_rows",
              columns: Optional[Sequence[Any]] = None, source: Any = None) -> list[Any]:
    """`due_rows`' enrollments (due by `now`, taken and locked the same way), as rows of
    `columns` of `source` — the enrollment joined with what the caller reads of each, in the
    same statement rather than a second read of the batch by id. `key` names the statement
    (built once per key and database); by default `due_rows`' own columns."""
    postgres = conn.dialect.name == "postgresql"
    stmt = prebuilt((key, postgres), lambda: _due_rows_stmt(
        [enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active",
         enrollment_t.c.step_id == bindparam("step"), enrollment_t.c.next_due_at <= bindparam("now")],
        bindparam("limit"), postgres, columns, source))
    return conn.execute(stmt, {"journey": plan.name, "step": node.id, "now": now, "limit": limit}).all()


def _due_rows_stmt(filters: list, limit: Any, postgres: bool, columns: Optional[Sequence[Any]] = None,
                   source: Any = None) -> Any:
    if columns is None:
        columns = (enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone, enrollment_t.c.next_due_at)
    if source is None:
        source = enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id)
    stmt = (select(*columns).select_from(source)
            # next_due_at order comes straight from ix_enrollment_due: no sort of the whole
            # backlog for every batch (ordering by id made a large tick quadratic).
            .where(*filters).order_by(enrollment_t.c.next_due_at).limit(limit))
    if postgres:
        stmt = stmt.with_for_update(of=enrollment_t, skip_locked=True)
    return stmt


def due_steps(conn: Any, plan: Plan, now: datetime) -> set[str]:
    """The steps of `plan` with at least one active enrollment due by `now`: one statement of
    an index seek per step (ix_enrollment_due), instead of one transaction per step that finds
    nothing — most steps of most ticks. The statement is built once per step list and
    database. On PostgreSQL each step is its own EXISTS with the step id as a constant, so the
    seek covers all four columns: as a join to the list of steps, PostgreSQL read every due
    enrollment of the journey and filtered them by step (100,000 due: 50 ms, after every batch
    of a large tick). SQLite seeks per step either way, and runs the join form in 26 µs
    against 63 for eight steps."""
    postgres = conn.dialect.name == "postgresql"

    def due(step: Any) -> Any:
        return exists(select(enrollment_t.c.id).where(
            enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active",
            enrollment_t.c.step_id == step, enrollment_t.c.next_due_at <= bindparam("now")))

    def build() -> Any:
        if postgres:
            return union_all(*[select(literal(sid).label("step_id")).where(due(literal(sid))) for sid in plan.order])
        steps = union_all(*[select(literal(sid).label("step_id")) for sid in plan.order]).subquery("steps")
        return select(steps.c.step_id).where(due(steps.c.step_id))
    stmt = prebuilt(("due_steps", tuple(plan.order), postgres), build)
    return {sid for (sid,) in conn.execute(stmt, {"journey": plan.name, "now": now})}


def move_on_when_due(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    """The whole work of a step whose due time was set on arrival (`wait`, `wait_until`): one
    batch of due enrollments moves to the next step. False when none was due."""
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        move(conn, rt, plan, rows, node.next, now)
        report[(node.id, "waited", None)] += len(rows)
        return True
