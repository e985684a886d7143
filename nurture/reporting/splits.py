"""A/B/n `split` steps: per arm, who was assigned, who converted, and the difference of the
conversion rate to the first arm with Newcombe's 95 % interval (nurture.reporting.lift); and,
for a split with `auto_winner`, its decision. `arm_stats` is the one computation of an arm's
figures: the report shows them, and the `auto_winner` rule (nurture.runtime.auto_winner)
decides on them.

A member is counted in the arm it took: the split step records it in `enrollment.state`
(nurture.runtime.effective_journey.SPLIT_ARMS) — never a hash of today's arm list, which a live
edit of the weights or arms would make another draw (an arm since removed counts in no arm).
Enrollments that passed the split before arms were recorded have none: their arm is read from
the message log where it can be — a row of a step that only that arm reaches, or standing on
one now — and else computed again with the stable hash `pick_arm` of the current arms (exact
unless the arms were edited since). Who reached a split: an enrollment (outside the holdout)
with a recorded arm, or with a message row (any outcome) of a step that can only be reached
through the split (a step the split dominates: inside its arms, or after them when every path
there passes the split), or that is at such a step now. An arm's members are counted whether
or not a message reached them (intention to treat): a suppressed contact is still part of what
the arm did.
A conversion counts for the arm when it happened after the enrollment reached the split
(its first row of a dominated step; a member without such rows: any conversion recorded).

Once a split is decided, the split step sends every arrival to the winner and marks it in
`enrollment.state` (nurture.runtime.effective_journey.DECIDED_ARMS). Those members are not in
the arms — they were not randomised, and counting them would credit the winner with a crowd
it was given — only in `SplitDecisionReport.after_decision`. The arms are the experiment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import and_, case, func, null, or_, select

from nurture.compiler import Plan
from nurture.store.times import aware
from nurture.reporting.converted import counted_conversion
from nurture.reporting.incremental import Estimate, Sample
from nurture.reporting.lift import lift
from nurture.runtime.effective_journey import (DECIDED_ARMS, SPLIT_ARMS, recorded_decisions, walk_steps,
                                               with_winners)
from nurture.runtime.stable_random import pick_arm
from nurture.store.tables import enrollment_t, message_t, version_t


@dataclass
class ArmReport:
    name: str
    recipients: int = 0  # enrollments assigned to the arm (outside the holdout)
    conversions: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0  # Σ revenue² over the members: the spread behind revenue per recipient
    difference: Optional[Estimate] = None  # rate − first arm's rate (0, no interval, for the first arm)

    @property
    def rate(self) -> Optional[float]:
        return self.conversions / self.recipients if self.recipients else None

    @property
    def revenue_per_recipient(self) -> Optional[float]:
        return self.revenue / self.recipients if self.recipients else None

    @property
    def revenue_sample(self) -> Sample:
        """Revenue per member (0 for most) as a sample, for Welch's interval of a difference."""
        return Sample(self.recipients, self.revenue, self.revenue_sq)


@dataclass
class SplitDecisionReport:
    """A decided split: from the decision on, every arrival went to `winner`."""
    winner: str
    decided_by: str  # "auto_winner" (recorded by the engine) | "journey_file" (`decided:` written by hand)
    metric: str  # conversion_rate | revenue_per_recipient
    confidence: float  # e.g. 0.95
    decided_at: Optional[datetime]  # None: written by hand, and no recorded version carries it yet
    version: Optional[str]  # the journey version that first carried the decision
    after_decision: int = 0  # members (outside the holdout) sent to the winner since: not in the arms
    stats: dict = field(default_factory=dict)  # auto_winner: the figures it was decided on


@dataclass
class SplitReport:
    step: str
    arms: list[ArmReport] = field(default_factory=list)  # the experiment: members before any decision
    has_value: bool = True  # the journey's goal has a money value (else revenue is n/a)
    decision: Optional[SplitDecisionReport] = None  # None: undecided (or no auto_winner)


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


def own_steps(plan: Plan, split: str) -> list[set[str]]:
    """Per arm of `split` (in order), the steps only that arm reaches: a message row of one, or
    standing on one, shows which arm a member took (empty for an arm without steps)."""
    node = plan.nodes[split]
    around = _reachable(plan, plan.first, blocked=split)
    reach = [_reachable(plan, first, blocked=split) for _, _, first in node.arms]
    return [steps - around - set().union(*(other for j, other in enumerate(reach) if j != i))
            for i, steps in enumerate(reach)]


# (journey, split, its arms) → {contact id: the index of its arm}: the figures are read again
# and again (auto_winner looks every hour), and a member's stable hash is worked out once.
_ARMS_OF: dict[tuple, dict[int, int]] = {}


_MEMBERS_KEPT = 1 << 18  # members of one split whose arm is kept (~30 MB); beyond, worked out again


def _arms_of(journey: str, sid: str, arms: tuple) -> dict[int, int]:
    key = (journey, sid, arms)
    found = _ARMS_OF.get(key)
    if found is None or len(found) > _MEMBERS_KEPT:
        if len(_ARMS_OF) > 64:  # (journeys edited again and again in one process)
            _ARMS_OF.clear()
        found = _ARMS_OF[key] = {}
    return found


def arm_stats(conn: Any, plan: Plan, sid: str, now: Optional[datetime] = None) -> tuple[list[ArmReport], int]:
    """The experiment of split `sid`: its arms (members by the arm they took — see the module
    docstring —, their conversions and revenue after reaching the split; no differences yet),
    and how many members (outside the holdout) a decision sent to its winner instead — those
    are in no arm. `now` (a report as of a past time): only enrollments, message rows and
    conversions by then."""
    node = plan.nodes[sid]
    arms = [ArmReport(name) for name, _, _ in node.arms]
    inside = sorted(dominated(plan, sid))
    own = own_steps(plan, sid)
    # Per enrollment that has rows of a dominated step: the first one's time (`start`) and, for
    # an enrollment without a recorded arm, the arm whose own steps it has rows of (`logged`) —
    # one pass over the rows, grouped.
    logged = [(message_t.c.step_id.in_(sorted(steps)), i) for i, steps in enumerate(own) if steps]
    reached = (select(message_t.c.enrollment_id.label("eid"), func.min(message_t.c.created_at).label("start"),
                      *([func.min(case(*logged, else_=None)).label("logged")] if logged else []))
               .where(message_t.c.journey == plan.name, message_t.c.step_id.in_(inside),
                      *([message_t.c.created_at <= now] if now is not None else []))
               .group_by(message_t.c.enrollment_id).subquery())
    # What each row needs is worked out by the database (a comparison of two stored times, the
    # arms read out of the state): no row's state is decoded and no row's times are turned
    # into datetimes here — the rule runs this every hour of the clock.
    converted_after = case((and_(counted_conversion(),
                                 *([enrollment_t.c.converted_at <= now] if now is not None else []),
                                 or_(reached.c.start.is_(None), enrollment_t.c.converted_at >= reached.c.start)), 1),
                           else_=0)
    recorded = enrollment_t.c.state[(SPLIT_ARMS, sid)].as_string()
    decided = enrollment_t.c.state[(DECIDED_ARMS, sid)].as_string()
    rows = conn.execute(
        select(enrollment_t.c.contact_id, enrollment_t.c.step_id, converted_after, enrollment_t.c.revenue,
               decided.is_not(None), recorded, reached.c.logged if logged else null(), reached.c.start.is_not(None))
        .select_from(enrollment_t.outerjoin(reached, reached.c.eid == enrollment_t.c.id))
        .where(enrollment_t.c.journey == plan.name, enrollment_t.c.holdout == False,  # noqa: E712
               *([enrollment_t.c.entered_at <= now] if now is not None else []),
               or_(reached.c.eid.is_not(None), enrollment_t.c.step_id.in_(inside), recorded.is_not(None),
                   decided.is_not(None)))
    ) if inside else ()
    index = {name: i for i, (name, _, _) in enumerate(node.arms)}
    standing = {step: i for i, steps in enumerate(own) for step in steps}
    arm_key = tuple(node.arms)
    of_contact = _arms_of(plan.name, sid, arm_key)
    inside_set = set(inside)
    after_decision = 0
    for cid, step, converted, revenue, was_decided, took, log_arm, has_start in rows:
        if was_decided:
            after_decision += 1
            continue
        if took is not None:
            i = index.get(took)
            if i is None:
                continue  # an arm since removed from the split: it is in none of today's
        elif log_arm is not None:
            i = log_arm
        elif step in standing:
            i = standing[step]
        elif not has_start and step not in inside_set:
            continue
        else:  # passed the split before arms were recorded, and nothing in the log tells
            i = of_contact.get(cid)
            if i is None:
                i = of_contact[cid] = index[pick_arm(plan.name, sid, cid, arm_key)[0]]
        arm = arms[i]
        arm.recipients += 1
        if converted:
            value = float(revenue or 0)
            arm.conversions += 1
            arm.revenue += value
            arm.revenue_sq += value * value
    return arms, after_decision


def split_reports(conn: Any, plan: Plan, now: datetime, has_value: bool) -> list[SplitReport]:
    """Every split of `plan` (compiled from the journey file): its arms with their difference
    to the first arm, and its decision — recorded in `split_decision`, or written in the file."""
    splits = [sid for sid in plan.order if plan.nodes[sid].kind == "split"]
    if not splits:
        return []
    auto = any(plan.nodes[s].step.auto_winner is not None for s in splits)
    recorded = recorded_decisions(conn, plan.name) if auto else {}
    effective, applied = with_winners(plan.journey, {sid: d.winner for sid, d in recorded.items()})
    rules = {step.id: step.auto_winner for step in walk_steps(effective.steps) if step.auto_winner is not None}
    out = []
    for sid in splits:
        arms, after_decision = arm_stats(conn, plan, sid, now)
        report = SplitReport(sid, arms, has_value)
        out.append(report)
        first = arms[0]
        first.difference = Estimate(0.0) if first.recipients else Estimate(None)  # the reference
        for arm in arms[1:]:
            if arm.recipients and first.recipients:
                d = lift(arm.conversions, arm.recipients, first.conversions, first.recipients)
                arm.difference = Estimate(d.difference, d.low, d.high)
            else:
                arm.difference = Estimate(None)
        rule = rules.get(sid)
        if rule is None or rule.decided is None:
            continue
        if sid in applied:
            row = recorded[sid]
            report.decision = SplitDecisionReport(row.winner, "auto_winner", row.metric, row.confidence,
                                                  aware(row.decided_at), row.version, after_decision, row.stats)
        else:
            version, at = _first_version_deciding(conn, plan.name, sid, rule.decided)
            report.decision = SplitDecisionReport(rule.decided, "journey_file", rule.metric, rule.confidence,
                                                  at, version, after_decision)
    return out


def _first_version_deciding(conn: Any, journey: str, sid: str,
                            winner: str) -> tuple[Optional[str], Optional[datetime]]:
    """The first recorded version of `journey` whose split `sid` says `decided: winner`, and
    when it was recorded: for a decision written in the file by hand."""
    for version, spec, created_at in conn.execute(
            select(version_t.c.version, version_t.c.spec, version_t.c.created_at)
            .where(version_t.c.journey == journey).order_by(version_t.c.created_at, version_t.c.id)):
        if _decided_in(spec, sid) == winner:
            return version, aware(created_at)
    return None, None


def _decided_in(spec: Any, sid: str) -> Optional[str]:
    """`auto_winner.decided` of step `sid` in a recorded spec (nested steps searched too)."""
    if isinstance(spec, list):
        return next((d for d in (_decided_in(v, sid) for v in spec) if d is not None), None)
    if not isinstance(spec, dict):
        return None
    if spec.get("id") == sid and isinstance(spec.get("auto_winner"), dict):
        return spec["auto_winner"].get("decided")
    return _decided_in(list(spec.values()), sid)
