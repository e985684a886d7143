"""Leaving a journey early: `exit_when` conditions (checked at the start of every tick, in
SQL over all active enrollments) and the `goal` (conversion and revenue within a window,
recorded for messaged and holdout contacts alike, so lift can be measured)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select

from nurture.compiler import Plan
from nurture.conditions import ConditionScope, clock_values, compile_any, properties_match
from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks, prebuilt
from nurture.store.tables import contact_t, enrollment_t, event_t


LATE_CONVERSIONS = timedelta(days=30)
# Windows that closed within LATE_CONVERSIONS are looked at once per this much of the tick's
# clock in one Runtime, open ones at every tick: a goal event matching a closed window can only
# be one tracked after the window closed (else a tick saw it while it was open), and closed
# windows are most of a busy journey's enrollments (a 3-day window, 33 days looked at).
LATE_EVERY = timedelta(hours=1)


def record_conversions(rt: Runtime, plan: Plan, now: datetime) -> int:
    """Record the conversions of `plan`'s journey: every enrollment whose first goal event (not
    its trigger) falls inside its goal window — entered_at to entered_at + within — and has
    happened by `now`. Open windows are looked at on every tick; windows closed within
    LATE_CONVERSIONS (a purchase tracked late) at most once per LATE_EVERY of the clock per
    Runtime, so a late-tracked goal event is recorded up to an hour after it is tracked."""
    goal = plan.journey.goal
    if goal is None:
        return 0
    memo = rt.memo.setdefault(("conversions.late", plan.name), {})
    last = memo.get("at")
    with_late = last is None or now < last or now - last >= LATE_EVERY
    since = now - goal.within - (LATE_CONVERSIONS if with_late else timedelta(0))
    converted = _record_conversions(rt, plan, now, since)
    if with_late:
        memo["at"] = now
    return converted


def _window_end(dialect: str, seconds: int) -> Any:
    """enrollment.entered_at + `seconds`, in SQL: a bound on the goal event's time that the
    database can use (the exact window is checked in Python; this one is a second wider:
    SQLite's datetime() drops the fraction)."""
    if dialect == "sqlite":
        return func.datetime(enrollment_t.c.entered_at, f"+{seconds + 1} seconds")
    return enrollment_t.c.entered_at + literal_column(f"interval '{seconds + 1} seconds'")


def _record_conversions(rt: Runtime, plan: Plan, now: datetime, entered_since: datetime) -> int:
    goal = plan.journey.goal
    dialect = rt.store.dialect

    def build() -> Any:
        filters = [enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.converted_at.is_(None),
                   # Windows that closed recently are looked at too: a purchase tracked late (or a
                   # paused schedule) still counts if it happened inside the window.
                   enrollment_t.c.entered_at >= bindparam("entered_since"),
                   event_t.c.contact_id == enrollment_t.c.contact_id, event_t.c.name == bindparam("event"),
                   event_t.c.occurred_at >= enrollment_t.c.entered_at, event_t.c.occurred_at <= bindparam("now"),
                   event_t.c.occurred_at <= _window_end(dialect, int(goal.within.total_seconds())),
                   (enrollment_t.c.trigger_event_pk.is_(None)) | (event_t.c.id != enrollment_t.c.trigger_event_pk)]
        if goal.where:
            filters.append(properties_match(event_t.c.properties, goal.where))
        return (select(enrollment_t.c.id, enrollment_t.c.entered_at, enrollment_t.c.status,
                       event_t.c.occurred_at, event_t.c.properties)
                .where(*filters).order_by(enrollment_t.c.id, event_t.c.occurred_at))
    # (built once per journey version: `where` is part of the plan)
    stmt = prebuilt(("conversions", plan.name, plan.version, dialect), build)
    # In the write transaction the enrollments are locked as they are read (PostgreSQL, in id
    # order): a second worker recording the same tick waits, then finds them converted.
    locking = prebuilt(("conversions.locking", plan.name, plan.version, dialect),
                       lambda: stmt.with_for_update(of=enrollment_t) if dialect == "postgresql" else stmt)
    params = {"journey": plan.name, "event": goal.event, "now": now, "entered_since": entered_since}

    def firsts(conn: Any, statement: Any) -> dict[int, tuple]:
        """enrollment id → (status, time, properties) of its first goal event inside the window."""
        first: dict[int, tuple] = {}
        for enrollment_id, entered_at, status, occurred_at, props in conn.execute(statement, params):
            if occurred_at - entered_at <= goal.within:
                first.setdefault(enrollment_id, (status, occurred_at, props or {}))
        return first
    with rt.store.reading() as conn:  # a read first: most ticks record no conversion
        if not firsts(conn, stmt):
            return 0
    with rt.store.engine.begin() as conn:
        first = firsts(conn, locking)
        updates = []
        for enrollment_id, (status, occurred_at, props) in first.items():
            try:
                revenue = float(props.get("value", 0) or 0)
            except (TypeError, ValueError):
                revenue = 0.0
            leaves = status in ("active", "completed")
            updates.append({"eid": enrollment_id, "converted_at": occurred_at, "revenue": revenue,
                            "status": "converted" if leaves else status})
        if updates:
            conn.execute(enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
                         .values(converted_at=bindparam("converted_at"),
                                 revenue=bindparam("revenue"),
                                 status=bindparam("status")), updates)
            # A converted contact leaves the journey: no more messages about a finished purchase.
            ids = [u["eid"] for u in updates if u["status"] == "converted"]
            for part in chunks(ids):
                conn.execute(enrollment_t.update()
                             .where(enrollment_t.c.id.in_(part), enrollment_t.c.step_id.isnot(None))
                             .values(step_id=None, next_due_at=None, left_at=now, exit_reason="goal"))
        return len(updates)


def apply_exits(rt: Runtime, plan: Plan, now: datetime) -> int:
    key = ("exits", plan.name, plan.version)
    if key not in rt.memo:  # built once per journey version and Runtime (its segments), run at any time
        scope = ConditionScope(now, rt.project.segments, in_enrollment=True, clock={})
        condition = compile_any(list(plan.journey.exit_when), scope)
        rt.memo[key] = None if condition is None else (
            select(enrollment_t.c.id)
            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
            .where(enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active", condition),
            scope.clock)
    if rt.memo[key] is None:
        return 0
    stmt, clock = rt.memo[key]
    params = {"journey": plan.name, **clock_values(clock, now)}
    with rt.store.reading() as conn:  # a read first: most ticks exit no one
        if conn.execute(stmt, params).first() is None:
            return 0
    with rt.store.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(stmt, params)]
        exited = 0
        for part in chunks(ids):  # (another worker's tick may have let some of them exit since the read)
            exited += conn.execute(
                enrollment_t.update().where(enrollment_t.c.id.in_(part), enrollment_t.c.status == "active")
                .values(status="exited", step_id=None, next_due_at=None, left_at=now,
                        exit_reason="exit_when")).rowcount
        return exited
