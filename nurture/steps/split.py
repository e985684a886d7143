"""The `split` step: weighted random A/B/n. A contact's arm is a stable function of journey,
step and contact (nurture.runtime.stable_random), so a re-run picks the same arm."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Optional

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.stable_random import pick_arm
from nurture.steps.transitions import Row, due_rows, move, step_batch


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
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
