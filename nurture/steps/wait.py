"""The `wait` step: a duration (`wait: 2h`). An enrollment arriving here is due when the
duration has passed (nurture.runtime.timing); then it moves on."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.steps.transitions import due_rows, move, step_batch


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        move(conn, rt, plan, rows, node.next, now)
        report[(node.id, "waited", None)] += len(rows)
        return True
