"""The `handover` step: an MQL goes to sales (nurture.scoring.handover: the handover row,
the lifecycle stage, delivery to the CRM, and the move on — in the batch's transaction)."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.scoring.handover import hand_over
from nurture.steps.transitions import due_rows, step_batch


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        hand_over(conn, rt, plan, node, rows, now, report)
        return True
