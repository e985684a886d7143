"""The `handover` step: an MQL goes to sales (nurture.scoring.handover). In the batch's
transaction: the handover rows, claimed by this run, the lifecycle stage and the move on.
After it has committed: the delivery to the CRM or the file, outside any write transaction,
and its outcomes recorded in a short one."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.scoring.handover import deliver_claimed, hand_over
from nurture.steps.transitions import due_rows, step_batch


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        claim = hand_over(conn, rt, plan, node, rows, now)
    for status, n in deliver_claimed(rt, claim, now).items():
        report[(node.id, "handover_" + status, None)] += n
    return True
