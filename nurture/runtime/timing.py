"""When an enrollment arriving at a step is next due there (waits, wait_until in the
contact's own time zone, wait_for timeouts); instant steps are due on arrival."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from nurture.compiler import Node
from nurture.send.guards.quiet_hours import next_local_time, zone
from nurture.spec.models import WEEKDAYS, hhmm_to_time


def arrival_due(node: Node, at: datetime, tz_name: Optional[str], default_tz: str) -> datetime:
    """When an enrollment arriving at `node` at `at` is next due there."""
    if node.kind == "wait":
        return at + node.step.wait
    if node.kind == "wait_for":
        return at + node.step.wait_for.within
    if node.kind == "wait_until":
        spec = node.step.wait_until
        days = frozenset(WEEKDAYS.index(d) for d in spec.weekdays) if spec.weekdays else None
        return next_local_time(at, zone(tz_name, default_tz), hhmm_to_time(spec.time), days)
    return at
