"""A/B/n `split` steps: per arm, who was assigned, who converted, and the difference of the
conversion rate to the first arm with Newcombe's 95 % interval (nurture.reporting.lift).

The engine does not store an enrollment's arm: it is a stable hash of (journey, split step,
contact) — `pick_arm` — so it is computed again here, exactly as the split step computed it.
Who reached a split is known from the message log: an enrollment (outside the holdout) with a
message row (any outcome) of a step that can only be reached through the split (a step the
split dominates: inside its arms, or after them when every path there passes the split), or
that is at such a step now. An arm's members are counted whether or not a message reached
them (intention to treat): a suppressed contact is still part of what the arm did.
A conversion counts for the arm when it happened after the enrollment reached the split
(its first row of a dominated step; a member without rows yet is in the arm now).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import func, select

from nurture.compiler import Plan
from nurture.reporting._times import aware
from nurture.reporting.incremental import Estimate
from nurture.reporting.lift import lift
from nurture.store.tables import enrollment_t, message_t


@dataclass
class ArmReport:
    name: str
    recipients: int = 0  # enrollments assigned to the arm (outside the holdout)
    conversions: int = 0
    revenue: float = 0.0
    difference: Optional[Estimate] = None  # rate − first arm's rate (0, no interval, for the first arm)

    @property
    def rate(self) -> Optional[float]:
        return self.conversions / self.recipients if self.recipients else None

    @property
    def revenue_per_recipient(self) -> Optional[float]:
        return self.revenue / self.recipients if self.recipients else None


@dataclass
class SplitReport:
    step: str
    arms: list[ArmReport] = field(default_factory=list)
    has_value: bool = True  # the journey's goal has a money value (else revenue is n/a)


def _successors(plan: Plan, sid: str) -> list[str]:
    node = plan.nodes[sid]
    if node.kind == "split":
        targets = [first for _, _, first in node.arms]
    elif node.kind in ("branch", "wait_for"):
        targets = [node.then_first, node.else_first]
    elif node.kind == "exit":
        targets = []
    else:
        targets = [node.next]
    return [t for t in targets if t is not None]


def _reachable(plan: Plan, start: Optional[str], blocked: Optional[str] = None) -> set[str]:
    seen: set[str] = set()
    todo = [start] if start is not None and start != blocked else []
    while todo:
        sid = todo.pop()
        if sid in seen or sid not in plan.nodes:
            continue
        seen.add(sid)
        todo.extend(t for t in _successors(plan, sid) if t != blocked)
    return seen


def dominated(plan: Plan, split: str) -> set[str]:
    """Steps every path to which passes `split` (the split itself excluded)."""
    after = set()
    for t in _successors(plan, split):
        after |= _reachable(plan, t)
    return after - _reachable(plan, plan.first, blocked=split) - {split}


def split_reports(conn: Any, plan: Plan, now: datetime, has_value: bool) -> list[SplitReport]:
    from nurture.runtime.stable_random import pick_arm
    splits = [sid for sid in plan.order if plan.nodes[sid].kind == "split"]
    out = []
    for sid in splits:
        node = plan.nodes[sid]
        inside = dominated(plan, sid)
        report = SplitReport(sid, [ArmReport(name) for name, _, _ in node.arms], has_value)
        out.append(report)
        if not inside:
            continue
        reached: dict[int, Any] = {}  # enrollment → when it first had a row of a dominated step (None: no row yet)
        members: dict[int, tuple[int, Optional[datetime], float]] = {}
        for eid, first_row in conn.execute(
                select(message_t.c.enrollment_id, func.min(message_t.c.created_at))
                .select_from(message_t.join(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id))
                .where(message_t.c.journey == plan.name, message_t.c.step_id.in_(sorted(inside)),
                       enrollment_t.c.holdout == False)  # noqa: E712
                .group_by(message_t.c.enrollment_id)):
            reached[eid] = first_row
        for eid, cid, step, converted_at, revenue in conn.execute(
                select(enrollment_t.c.id, enrollment_t.c.contact_id, enrollment_t.c.step_id,
                       enrollment_t.c.converted_at, enrollment_t.c.revenue)
                .where(enrollment_t.c.journey == plan.name, enrollment_t.c.holdout == False)):  # noqa: E712
            if eid in reached or step in inside:
                members[eid] = (cid, converted_at, float(revenue or 0))
        index = {name: i for i, (name, _, _) in enumerate(node.arms)}
        for eid, (cid, converted_at, revenue) in members.items():
            arm = report.arms[index[pick_arm(plan.name, sid, cid, node.arms)[0]]]
            arm.recipients += 1
            start = reached.get(eid)
            if converted_at is not None and (start is None or aware(converted_at) >= aware(start)):
                arm.conversions += 1
                arm.revenue += revenue
        first = report.arms[0]
        first.difference = Estimate(0.0) if first.recipients else Estimate(None)  # the reference
        for arm in report.arms[1:]:
            if arm.recipients and first.recipients:
                d = lift(arm.conversions, arm.recipients, first.conversions, first.recipients)
                arm.difference = Estimate(d.difference, d.low, d.high)
            else:
                arm.difference = Estimate(None)
    return out


