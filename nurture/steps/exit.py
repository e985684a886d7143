"""The `exit` step: the enrollment leaves the journey here, `exited` with the step's reason."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.steps.transitions import due_rows, step_batch
from nurture.store.tables import enrollment_t

_exit = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
         .values(status="exited", step_id=None, next_due_at=None, left_at=bindparam("at"),
                 exit_reason=bindparam("reason")))


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        reason = node.step.exit.reason
        conn.execute(_exit, [{"eid": r[0], "at": now, "reason": reason} for r in rows])
        report[(node.id, "exited", reason)] += len(rows)
        return True
