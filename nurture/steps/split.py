"""The `split` step: weighted random A/B/n. A contact's arm is a stable function of journey,
step and contact (nurture.runtime.stable_random), so a re-run picks the same arm.

Once the split is decided (`auto_winner.decided`, from the journey file or applied from the
`split_decision` table by nurture.runtime.effective_journey), every arrival goes to the winner
and is marked in `enrollment.state` (DECIDED_ARMS), so the report can leave it out of the
experiment. Members who passed the split before keep their arm: they are at later steps."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import bindparam, select

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.effective_journey import DECIDED_ARMS
from nurture.runtime.sql import ids_in, write_many
from nurture.runtime.stable_random import pick_arm
from nurture.steps.transitions import Row, due_rows, move, step_batch
from nurture.store.tables import enrollment_t

_set_state = enrollment_t.update().where(enrollment_t.c.id == bindparam("eid")).values(state=bindparam("st"))


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        rule = node.step.auto_winner
        if rule is not None and rule.decided is not None:
            _send_to_winner(conn, rt, plan, node, rule.decided, rows, now)
            report[(node.id, f"arm:{rule.decided}", None)] += len(rows)
            return True
        by_arm: dict[str, list[Row]] = {}
        targets: dict[str, Optional[str]] = {}
        for row in rows:
            name, _, first = pick_arm(plan.name, node.id, row[1], node.arms)
            by_arm.setdefault(name, []).append(row)
            targets[name] = first
        for name, arm_rows in by_arm.items():
            move(conn, rt, plan, arm_rows, targets[name], now)
            report[(node.id, f"arm:{name}", None)] += len(arm_rows)
        return True


def _send_to_winner(conn: Any, rt: Runtime, plan: Plan, node: Node, winner: str, rows: list[Row],
                    now: datetime) -> None:
    """The whole batch to the decided arm, each enrollment marked as sent there by the decision
    (one read of the batch's states, one bulk write)."""
    first = next(target for name, _, target in node.arms if name == winner)
    states = conn.execute(select(enrollment_t.c.id, enrollment_t.c.state)
                          .where(ids_in(enrollment_t.c.id, [r[0] for r in rows]))).all()
    marked = []
    for eid, state in states:
        state = dict(state or {})
        state[DECIDED_ARMS] = {**(state.get(DECIDED_ARMS) or {}), node.id: winner}
        marked.append({"eid": eid, "st": state})
    write_many(conn, _set_state, marked)
    move(conn, rt, plan, rows, first, now)
