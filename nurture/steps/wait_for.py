"""The `wait_for` step: an event within a timeout. An enrollment whose contact performed the
event (matching `where`) since arriving here, and before its window closed (`next_due_at`, set
on arrival to arrival + `within`), takes the `then` path; one still waiting when `within` has
passed takes the `timeout` path — also when the event came later and a late tick sees both.
The `then` path starts at the event's time (its first match), not at the tick that noticed it:
a `wait: 1h` after a click at 10:10 ends at 11:10 whichever tick sees the click (the timeout
path starts at the window's end, as every due step does). An event counts when it happened
after arriving here — strictly after: the event that ended a wait_for (whose time is the next
step's arrival) never ends a following wait_for of the same event too."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import and_, exists, func, select

from nurture.compiler import Node, Plan
from nurture.conditions import properties_match
from nurture.runtime.context import Runtime
from nurture.runtime.sql import ids_in
from nurture.steps.transitions import due_rows, move, step_batch
from nurture.store.tables import enrollment_t, event_t
from nurture.store.times import aware


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    spec = node.step.wait_for
    with step_batch(rt) as conn:
        ev = event_t.alias("ev_wait")
        matching = and_(ev.c.contact_id == enrollment_t.c.contact_id, ev.c.name == spec.event,
                        ev.c.occurred_at > enrollment_t.c.step_entered_at, ev.c.occurred_at <= now,
                        ev.c.occurred_at <= enrollment_t.c.next_due_at,
                        properties_match(ev.c.properties, spec.where) if spec.where else and_(True))
        rows = due_rows(conn, plan, node, now, rt.batch_size, exists(select(ev.c.id).where(matching)), due_only=False)
        if rows:
            # each arrives on the `then` path at its event's time (one read for the batch)
            when = dict(conn.execute(select(enrollment_t.c.id, func.min(ev.c.occurred_at))
                                     .where(ids_in(enrollment_t.c.id, [r[0] for r in rows]), matching)
                                     .group_by(enrollment_t.c.id)).all())
            move(conn, rt, plan, [(e, c, tz, aware(when.get(e)) or now) for e, c, tz, _ in rows], node.then_first, now)
            report[(node.id, "event_received", None)] += len(rows)
            return True
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        move(conn, rt, plan, rows, node.else_first, now)
        report[(node.id, "timed_out", None)] += len(rows)
        return True
