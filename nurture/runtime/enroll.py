"""Enrollment: trigger events read through a per-journey cursor, filtered by `where` in SQL,
subject to the re-entry rule; holdout assigned stably per contact and journey. Segment/`when`
triggers enroll matching contacts in one statement; date triggers live in enroll_dates."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import and_, exists, func, or_, select

from nurture.compiler import Plan
from nurture.conditions import ConditionScope, compile_condition
from nurture.runtime.context import Runtime
from nurture.runtime.enroll_dates import enroll_on_dates
from nurture.runtime.timing import arrival_due
from nurture.runtime.sql import chunks, for_update, ids_in, insert_ignore
from nurture.runtime.stable_random import in_holdout
from nurture.store.tables import contact_t, cursor_t, enrollment_t, event_t, pending_t


def _cursor(conn: Any, journey: str, now: datetime) -> int:
    # Insert-or-ignore, then lock: two workers enrolling a new journey at once must not both
    # insert its cursor (the second would fail on the primary key); the lock serializes them.
    insert_ignore(conn, cursor_t, [dict(journey=journey, last_event_pk=0, updated_at=now)], ("journey",))
    return conn.execute(for_update(select(cursor_t.c.last_event_pk).where(cursor_t.c.journey == journey), conn)).scalar_one()


def _may_enter(reentry: Any, history: list[tuple[str, datetime]], at: datetime) -> bool:
    if any(status == "active" for status, _ in history):
        return False  # never twice at once in the same journey
    if not history or reentry == "always":
        return True
    if reentry == "never":
        return False
    last_entry = max(entered for _, entered in history)
    return at - last_entry >= reentry


def enroll_matching(rt: Runtime, plan: Plan, now: datetime) -> int:
    """A segment/`when` trigger: every contact matching the condition now enters (one
    INSERT … SELECT), unless active in the journey or barred by the re-entry rule."""
    journey = plan.journey
    scope = ConditionScope(now, rt.project.segments, in_enrollment=False)
    previous = enrollment_t.alias("previous")
    barred = [previous.c.contact_id == contact_t.c.id, previous.c.journey == plan.name]
    if journey.reentry == "always":
        barred.append(previous.c.status == "active")
    elif journey.reentry != "never":
        barred.append((previous.c.status == "active") | (previous.c.entered_at > now - journey.reentry))
    first = plan.nodes[plan.first]
    default_tz = rt.project.policies.timezone
    with rt.store.engine.begin() as conn:
        rows = conn.execute(select(contact_t.c.id, contact_t.c.timezone).where(
            compile_condition(journey.trigger.condition(), scope),
            ~exists(select(previous.c.id).where(*barred))).order_by(contact_t.c.id)).all()
        new_rows = [dict(contact_id=cid, journey=plan.name, version=plan.version, step_id=plan.first,
                         next_due_at=arrival_due(first, now, tz, default_tz), step_entered_at=now,
                         status="active", holdout=in_holdout(plan.name, cid, journey.holdout),
                         entered_at=now, trigger_event_pk=None, revenue=0.0, defer_count=0, state={})
                    for cid, tz in rows]
        for part in chunks(new_rows, 5000):
            conn.execute(enrollment_t.insert(), list(part))
        return len(new_rows)


def enroll(rt: Runtime, plan: Plan, now: datetime) -> int:
    journey = plan.journey
    trigger = journey.trigger
    if trigger.date is not None:
        return enroll_on_dates(rt, plan, now).enrolled
    if trigger.event is None:
        return enroll_matching(rt, plan, now)
    with rt.store.engine.begin() as conn:
        cursor = _cursor(conn, plan.name, now)
        base = [event_t.c.name == trigger.event, event_t.c.id > cursor]
        upper = conn.execute(select(func.max(event_t.c.id)).where(*base)).scalar() or cursor
        window = [*base, event_t.c.id <= upper]
        # Events dated after this tick's clock (clock skew, scheduled events) wait in
        # journeypendingtrigger instead of holding the cursor back for everyone else.
        future = [dict(journey=plan.name, event_pk=pk, occurred_at=at) for pk, at in conn.execute(
            select(event_t.c.id, event_t.c.occurred_at).where(*window, event_t.c.occurred_at > now))]
        insert_ignore(conn, pending_t, future, ("journey", "event_pk"))
        ripe = [pk for (pk,) in conn.execute(select(pending_t.c.event_pk).where(
            pending_t.c.journey == plan.name, pending_t.c.occurred_at <= now))]
        for part in chunks(ripe):
            conn.execute(pending_t.delete().where(pending_t.c.journey == plan.name, ids_in(pending_t.c.event_pk, part)))
        if upper == cursor and not ripe:
            return 0
        in_window = and_(*window, event_t.c.occurred_at <= now)
        filters = [event_t.c.name == trigger.event, event_t.c.occurred_at >= now - trigger.lookback,
                   or_(in_window, ids_in(event_t.c.id, ripe)) if ripe else in_window]
        if trigger.where is not None:
            scope = ConditionScope(now, rt.project.segments, in_enrollment=False, trigger_event=event_t)
            filters.append(compile_condition(trigger.where, scope))
        rows = conn.execute(select(event_t.c.id, event_t.c.contact_id, event_t.c.occurred_at, contact_t.c.timezone)
                            .select_from(event_t.join(contact_t, contact_t.c.id == event_t.c.contact_id))
                            .where(*filters).order_by(event_t.c.occurred_at, event_t.c.id)).all()
        # The earliest qualifying event per contact is the one that enrolls.
        first_by_contact: dict[int, tuple[int, datetime, Optional[str]]] = {}
        for event_pk, contact_id, occurred_at, tz in rows:
            first_by_contact.setdefault(contact_id, (event_pk, occurred_at, tz))
        history: dict[int, list[tuple[str, datetime]]] = {}
        ids = list(first_by_contact)
        for part in chunks(ids):
            for contact_id, status, entered_at in conn.execute(
                    select(enrollment_t.c.contact_id, enrollment_t.c.status, enrollment_t.c.entered_at)
                    .where(enrollment_t.c.journey == plan.name, enrollment_t.c.contact_id.in_(part))):
                history.setdefault(contact_id, []).append((status, entered_at))
        new_rows = []
        first = plan.nodes[plan.first]
        default_tz = rt.project.policies.timezone
        for contact_id, (event_pk, occurred_at, tz) in first_by_contact.items():
            if not _may_enter(journey.reentry, history.get(contact_id, []), occurred_at):
                continue
            new_rows.append(dict(contact_id=contact_id, journey=plan.name, version=plan.version,
                                 step_id=plan.first, next_due_at=arrival_due(first, occurred_at, tz, default_tz),
                                 step_entered_at=occurred_at,
                                 status="active", holdout=in_holdout(plan.name, contact_id, journey.holdout),
                                 entered_at=occurred_at, trigger_event_pk=event_pk, revenue=0.0,
                                 defer_count=0, state={}))
        for part in chunks(new_rows, 5000):
            conn.execute(enrollment_t.insert(), list(part))
        conn.execute(cursor_t.update().where(cursor_t.c.journey == plan.name)
                     .values(last_event_pk=upper, updated_at=now))
        return len(new_rows)
