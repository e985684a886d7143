"""The `branch` step: `when` (a condition, compiled to SQL and evaluated for the whole batch
in the database) sends an enrollment down `then`, otherwise down `else`."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select

from nurture.compiler import Node, Plan
from nurture.conditions import ConditionScope, clock_values, compile_condition
from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks, ids_in
from nurture.steps.transitions import due_rows, move, step_batch
from nurture.store.tables import contact_t, enrollment_t


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        ids = [r[0] for r in rows]
        key = ("branch", plan.name, plan.version, node.id)
        if key not in rt.memo:  # built once per journey version and Runtime, run at any time
            scope = ConditionScope(now, rt.project.segments, in_enrollment=True, clock={})
            cond = compile_condition(node.step.branch.when, scope)
            rt.memo[key] = (select(enrollment_t.c.id)
                            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
                            .where(ids_in(enrollment_t.c.id, ()), cond), scope.clock)
        stmt, clock = rt.memo[key]
        params = clock_values(clock, now)
        matched: set[int] = set()
        for part in chunks(ids):
            matched.update(r[0] for r in conn.execute(stmt, {**params, "ids_id": list(part)}))
        then_rows = [r for r in rows if r[0] in matched]
        else_rows = [r for r in rows if r[0] not in matched]
        move(conn, rt, plan, then_rows, node.then_first, now)
        move(conn, rt, plan, else_rows, node.else_first, now)
        report[(node.id, "then", None)] += len(then_rows)
        report[(node.id, "else", None)] += len(else_rows)
        return True
