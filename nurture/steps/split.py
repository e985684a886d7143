"""The `split` step: weighted random A/B/n. A contact's arm is a stable function of journey,
step and contact (nurture.runtime.stable_random), so a re-run picks the same arm.

The arm a member takes is recorded in `enrollment.state` (SPLIT_ARMS, {step id: arm}) as it
passes: the weights and arms of a live split may be edited later, and a hash of the new arm
list would put past members in arms they never went through. The report and the
`auto_winner` rule count members by the recorded arm (nurture.reporting.splits).

Once the split is decided (`auto_winner.decided`, from the journey file or applied from the
`split_decision` table by nurture.runtime.effective_journey), every arrival goes to the winner
and is marked in `enrollment.state` (DECIDED_ARMS) instead, so the report can leave it out of
the experiment. Members who passed the split before keep their arm: they are at later steps."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Optional

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.effective_journey import DECIDED_ARMS, SPLIT_ARMS
from nurture.runtime.stable_random import pick_arm
from nurture.steps.transitions import Row, claim_due, move, step_batch
from nurture.store.tables import contact_t, enrollment_t

# the due enrollments with their state, claimed in one statement (no second read of the batch)
_DUE_COLUMNS = (enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone, enrollment_t.c.next_due_at,
                enrollment_t.c.state)


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        claimed = claim_due(conn, plan, node, now, rt.batch_size, "split_due", _DUE_COLUMNS)
        if not claimed:
            return False
        rows: list[Row] = [(eid, cid, tz, at) for eid, cid, tz, at, _ in claimed]
        states = {eid: state for eid, _, _, _, state in claimed}
        rule = node.step.auto_winner
        if rule is not None and rule.decided is not None:
            _send_to_winner(conn, rt, plan, node, rule.decided, rows, states, now)
            report[(node.id, f"arm:{rule.decided}", None)] += len(rows)
            return True
        by_arm: dict[str, list[Row]] = {}
        targets: dict[str, Optional[str]] = {}
        for row in rows:
            name, _, first = pick_arm(plan.name, node.id, row[1], node.arms)
            by_arm.setdefault(name, []).append(row)
            targets[name] = first
        for name, arm_rows in by_arm.items():
            marked = {eid: _marked(states[eid], SPLIT_ARMS, node.id, name) for eid, _, _, _ in arm_rows}
            move(conn, rt, plan, arm_rows, targets[name], now, marked)
            report[(node.id, f"arm:{name}", None)] += len(arm_rows)
        return True


def _marked(state: Optional[dict], key: str, sid: str, arm: str) -> dict:
    """`state` with `arm` under `key` for split `sid` (a new dict; the others' arms kept)."""
    state = dict(state or {})
    state[key] = {**(state.get(key) or {}), sid: arm}
    return state


def _send_to_winner(conn: Any, rt: Runtime, plan: Plan, node: Node, winner: str, rows: list[Row],
                    states: dict[int, Optional[dict]], now: datetime) -> None:
    """The whole batch to the decided arm, each enrollment marked as sent there by the decision
    (in the move's own write)."""
    first = next(target for name, _, target in node.arms if name == winner)
    move(conn, rt, plan, rows, first, now,
         {eid: _marked(states[eid], DECIDED_ARMS, node.id, winner) for eid, _, _, _ in rows})
