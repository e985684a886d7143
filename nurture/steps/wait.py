"""The `wait` step: a duration (`wait: 2h`). An enrollment arriving here is due when the
duration has passed (nurture.runtime.timing); then it moves on."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.steps.transitions import move_on_when_due


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    return move_on_when_due(rt, plan, node, now, report)
