"""The `handover` step: an MQL goes to sales (nurture.scoring.handover). In the batch's
transaction: the handover rows, claimed by this run, the lifecycle stage and the move on —
for a holdout member instead a `holdout` row and the move on alone (the control group is not
handed to sales). After it has committed: the delivery to the CRM or the file, outside any
write transaction, and its outcomes recorded in a short one."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.scoring.handover import deliver_claimed, hand_over, hold_out
from nurture.steps.transitions import claim_due, step_batch
from nurture.store.models import HOLDOUT
from nurture.store.tables import contact_t, enrollment_t

# due_rows' columns, and whether the enrollment is in the journey's holdout
_DUE_COLUMNS = (enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone, enrollment_t.c.next_due_at,
                enrollment_t.c.holdout)


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = claim_due(conn, plan, node, now, rt.batch_size, "handover_due", _DUE_COLUMNS)
        if not rows:
            return False
        held = hold_out(conn, rt, plan, node, [tuple(r[:4]) for r in rows if r.holdout], now)
        claim = hand_over(conn, rt, plan, node, [tuple(r[:4]) for r in rows if not r.holdout], now)
    if held:  # in the words of a held-out send (nurture run, plan's would_hold_out, simulate's funnel)
        report[(node.id, HOLDOUT, HOLDOUT)] += held
    for status, n in deliver_claimed(rt, claim, now).items():
        report[(node.id, "handover_" + status, None)] += n
    return True
