"""The report as data: per journey and per step, read from the message log, enrollments,
suppressions, the consent ledger, handovers and events — grouped in SQL, one query per
figure, never one per contact.

Definitions (also in docs/report.md):
- entered: enrollments; treated = not in the holdout; holdout = the control group.
- conversion: the journey's goal event within its window after entering (recorded by the
  engine for treated and holdout alike); conversion rate = converted / treated.
- lift: treated rate − holdout rate with Newcombe's 95 % interval (see lift.py).
- recipients: contacts with at least one sent message in the journey.
- unsubscribe rate: recipients who unsubscribed (suppression `unsubscribed` or a revoked
  e-mail consent) after their first message of the journey, / recipients; bounce rate: the
  same with a `hard_bounce` suppression.
- cost: sent messages × policies.unit_costs of their channel; ROI = (revenue − cost) / cost
  with the revenue of treated conversions; revenue per recipient = that revenue / recipients.
- per step: reached (one final outbox row per arrival), sent, suppressed / skipped / failed
  by reason, deferrals by reason (each deferral is a row), conversions and revenue of the
  enrollments that were sent this step and converted after it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional

from sqlalchemy import case, exists, func, or_, select

from nurture.conditions import enrollment_t, event_t
from nurture.consent_ledger import consent_t
from nurture.durations import format_duration
from nurture.reporting.attribution import MODELS, attribute, attribute_counts
from nurture.reporting.lift import Lift, lift
from nurture.scoring.models import Handover
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.models import Message, Suppression

message_t = Message.__table__
suppression_t = Suppression.__table__
handover_t = Handover.__table__
ATTRIBUTION_LOOKBACK = timedelta(days=30)


@dataclass
class StepReport:
    step: str
    channel: str
    reached: int = 0
    sent: int = 0
    failed: int = 0
    holdout: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    conversions: int = 0
    revenue: float = 0.0
    cost: float = 0.0


@dataclass
class JourneyReport:
    name: str
    description: str = ""
    goal: str = ""
    entered: int = 0
    treated: int = 0
    holdout: int = 0
    converted: int = 0
    converted_holdout: int = 0
    revenue: float = 0.0
    revenue_holdout: float = 0.0
    recipients: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # channel → sent messages
    cost: float = 0.0
    unsubscribes: int = 0
    bounces: int = 0
    lift: Optional[Lift] = None
    steps: list[StepReport] = field(default_factory=list)

    @property
    def conversion_rate(self) -> float:
        return self.converted / self.treated if self.treated else 0.0

    @property
    def holdout_rate(self) -> float:
        return self.converted_holdout / self.holdout if self.holdout else 0.0

    @property
    def roi(self) -> Optional[float]:
        return (self.revenue - self.cost) / self.cost if self.cost else None

    @property
    def revenue_per_recipient(self) -> float:
        return self.revenue / self.recipients if self.recipients else 0.0

    @property
    def unsubscribe_rate(self) -> float:
        return self.unsubscribes / self.recipients if self.recipients else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.recipients if self.recipients else 0.0


@dataclass
class AttributionRow:
    journey: str
    step: str
    conversions: dict[str, float] = field(default_factory=dict)  # model → credited conversions
    revenue: dict[str, float] = field(default_factory=dict)  # model → credited revenue


@dataclass
class HandoverStats:
    total: int = 0
    delivered: int = 0
    pending: int = 0
    failed: int = 0
    contacted_within_sla: int = 0
    contacted_late: int = 0
    open_within_sla: int = 0  # not contacted yet, SLA not over
    overdue: int = 0  # not contacted, SLA over


@dataclass
class Report:
    generated_at: datetime
    journeys: list[JourneyReport]
    attribution: list[AttributionRow]
    unattributed: tuple[int, float]  # conversions (and revenue) without any message before them
    daily: list[tuple[date, int, float]]  # day, conversions, revenue (each purchase once)
    handovers: HandoverStats
    unit_costs: dict[str, float]

    def journey(self, name: str) -> JourneyReport:
        return next(j for j in self.journeys if j.name == name)

    @property
    def total_revenue(self) -> float:
        return sum(j.revenue for j in self.journeys)

    @property
    def total_cost(self) -> float:
        return sum(j.cost for j in self.journeys)


def _enrollments(conn: Any, reports: dict[str, JourneyReport]) -> None:
    converted = enrollment_t.c.converted_at.isnot(None)
    rows = conn.execute(select(enrollment_t.c.journey, enrollment_t.c.holdout, func.count(),
                               func.count(enrollment_t.c.converted_at),
                               func.coalesce(func.sum(case((converted, enrollment_t.c.revenue), else_=0.0)), 0.0))
                        .group_by(enrollment_t.c.journey, enrollment_t.c.holdout)).all()
    for journey, holdout, n, conv, revenue in rows:
        r = reports.get(journey)
        if r is None:
            continue
        r.entered += n
        if holdout:
            r.holdout, r.converted_holdout, r.revenue_holdout = n, conv, float(revenue or 0)
        else:
            r.treated, r.converted, r.revenue = n, conv, float(revenue or 0)


def _steps(conn: Any, reports: dict[str, JourneyReport], project: ProjectSpec, costs: dict[str, float]) -> None:
    steps: dict[tuple[str, str], StepReport] = {}
    order = {}
    for name, journey in project.journeys.items():
        from nurture.compiler import compile_journey
        plan = compile_journey(journey)
        for i, sid in enumerate(plan.order):
            node = plan.nodes[sid]
            if node.kind == "send":
                steps[(name, sid)] = StepReport(sid, node.step.send.channel)
                order[(name, sid)] = i
    group = (message_t.c.journey, message_t.c.step_id, message_t.c.channel, message_t.c.attempt_key,
             message_t.c.status, message_t.c.reason)
    rows = conn.execute(select(*group, func.count()).where(message_t.c.enrollment_id.isnot(None)).group_by(*group)).all()
    for journey, step, channel, attempt_key, status, reason, n in rows:
        if journey not in reports:
            continue
        final = attempt_key == "send"  # 'defer:N' rows record deferrals
        s = steps.setdefault((journey, step), StepReport(step, channel))
        order.setdefault((journey, step), 10_000)
        reason = reason or "-"
        if not final:
            s.deferred[reason] = s.deferred.get(reason, 0) + n
            continue
        s.reached += n
        if status == "sent":
            s.sent += n
            s.cost += n * costs.get(channel, 0.0)
            r = reports[journey]
            r.sent[channel] = r.sent.get(channel, 0) + n
            r.cost += n * costs.get(channel, 0.0)
        elif status == "failed":
            s.failed += n
        elif status == "holdout":
            s.holdout += n
        elif status in ("suppressed", "skipped"):
            bucket = s.suppressed if status == "suppressed" else s.skipped
            bucket[reason] = bucket.get(reason, 0) + n
    for journey, step, n, revenue in conn.execute(
            select(message_t.c.journey, message_t.c.step_id, func.count(func.distinct(enrollment_t.c.id)),
                   func.coalesce(func.sum(enrollment_t.c.revenue), 0.0))
            .select_from(message_t.join(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id))
            .where(message_t.c.status == "sent", enrollment_t.c.converted_at.isnot(None),
                   enrollment_t.c.converted_at >= message_t.c.sent_at)
            .group_by(message_t.c.journey, message_t.c.step_id)):
        if (journey, step) in steps:
            steps[(journey, step)].conversions = n
            steps[(journey, step)].revenue = float(revenue or 0)
    for (journey, _), s in sorted(steps.items(), key=lambda kv: (kv[0][0], order[kv[0]])):
        if journey in reports:
            reports[journey].steps.append(s)


def _recipients(conn: Any, reports: dict[str, JourneyReport]) -> None:
    first = (select(message_t.c.journey, message_t.c.contact_id, func.min(message_t.c.sent_at).label("first_sent"))
             .where(message_t.c.status == "sent", message_t.c.enrollment_id.isnot(None))
             .group_by(message_t.c.journey, message_t.c.contact_id).subquery())
    for journey, n in conn.execute(select(first.c.journey, func.count()).group_by(first.c.journey)):
        if journey in reports:
            reports[journey].recipients = n

    def suppressed_after(reasons: list[str]) -> Any:
        return exists(select(suppression_t.c.id).where(suppression_t.c.contact_id == first.c.contact_id,
                                                       suppression_t.c.reason.in_(reasons),
                                                       suppression_t.c.created_at >= first.c.first_sent))

    revoked = exists(select(consent_t.c.id).where(consent_t.c.contact_id == first.c.contact_id,
                                                  consent_t.c.channel == "email", consent_t.c.status == "revoked",
                                                  consent_t.c.purpose == "marketing",
                                                  consent_t.c.recorded_at >= first.c.first_sent))
    for attr, cond in (("unsubscribes", or_(suppressed_after(["unsubscribed"]), revoked)),
                       ("bounces", suppressed_after(["hard_bounce"]))):
        for journey, n in conn.execute(select(first.c.journey, func.count()).where(cond).group_by(first.c.journey)):
            if journey in reports:
                setattr(reports[journey], attr, n)


def _conversions(conn: Any) -> list[tuple[int, datetime, float]]:
    """Each purchase once: (contact, converted_at) deduplicated over journeys, max revenue."""
    rows = conn.execute(select(enrollment_t.c.contact_id, enrollment_t.c.converted_at, func.max(enrollment_t.c.revenue))
                        .where(enrollment_t.c.converted_at.isnot(None))
                        .group_by(enrollment_t.c.contact_id, enrollment_t.c.converted_at)
                        .order_by(enrollment_t.c.converted_at, enrollment_t.c.contact_id)).all()
    return [(cid, at, float(rev or 0)) for cid, at, rev in rows]


def _attribution(conn: Any, conversions: list[tuple[int, datetime, float]]
                 ) -> tuple[list[AttributionRow], tuple[int, float]]:
    contacts = sorted({c for c, _, _ in conversions})
    touches: dict[int, list[tuple[datetime, str, str]]] = defaultdict(list)
    from nurture.runtime.sql import chunks
    for part in chunks(contacts):
        for cid, sent_at, journey, step in conn.execute(
                select(message_t.c.contact_id, message_t.c.sent_at, message_t.c.journey, message_t.c.step_id)
                .where(message_t.c.contact_id.in_(part), message_t.c.status == "sent")
                .order_by(message_t.c.contact_id, message_t.c.sent_at, message_t.c.id)):
            touches[cid].append((sent_at, journey, step))
    paths: list[tuple[float, list[tuple[str, str]]]] = []
    unattributed = [0, 0.0]
    for cid, at, revenue in conversions:
        path = [(j, s) for sent_at, j, s in touches.get(cid, []) if at - ATTRIBUTION_LOOKBACK <= sent_at <= at]
        if not path:
            unattributed[0] += 1
            unattributed[1] += revenue
        paths.append((revenue, path))
    by_revenue = attribute(paths)
    by_count = attribute_counts(p for _, p in paths)
    keys = sorted({k for m in MODELS for k in by_count[m]})
    rows = [AttributionRow(j, s, {m: by_count[m].get((j, s), 0.0) for m in MODELS},
                           {m: by_revenue[m].get((j, s), 0.0) for m in MODELS}) for j, s in keys]
    return rows, (unattributed[0], unattributed[1])


def _daily(conversions: list[tuple[int, datetime, float]]) -> list[tuple[date, int, float]]:
    days: dict[date, list] = {}
    for _, at, revenue in conversions:
        d = days.setdefault(at.astimezone(timezone.utc).date(), [0, 0.0])
        d[0] += 1
        d[1] += revenue
    if not days:
        return []
    out, day, last = [], min(days), max(days)
    while day <= last:
        n, rev = days.get(day, (0, 0.0))
        out.append((day, n, rev))
        day += timedelta(days=1)
    return out


def handover_stats(conn: Any, now: datetime) -> HandoverStats:
    """MQLs handed to sales and whether sales contacted them (`sales_contacted`) within the SLA."""
    stats = HandoverStats()
    contacted = (select(func.min(event_t.c.occurred_at))
                 .where(event_t.c.contact_id == handover_t.c.contact_id, event_t.c.name == "sales_contacted",
                        event_t.c.occurred_at >= handover_t.c.created_at).scalar_subquery())
    for status, due, first in conn.execute(select(handover_t.c.status, handover_t.c.sla_due_at, contacted)):
        stats.total += 1
        if status in ("delivered", "pending", "failed"):
            setattr(stats, status, getattr(stats, status) + 1)
        if first is not None:
            if first.tzinfo is None:
                first = first.replace(tzinfo=timezone.utc)
            if first <= due:
                stats.contacted_within_sla += 1
            else:
                stats.contacted_late += 1
        elif now > due:
            stats.overdue += 1
        else:
            stats.open_within_sla += 1
    return stats


def build_report(store: Store, project: ProjectSpec, now: Optional[datetime] = None,
                 journeys: Optional[list[str]] = None) -> Report:
    now = now or datetime.now(timezone.utc)
    names = journeys or sorted(project.journeys)
    costs = dict(project.policies.unit_costs)
    reports: dict[str, JourneyReport] = {}
    for name in names:
        spec = project.journeys.get(name)
        goal = f"{spec.goal.event} within {format_duration(spec.goal.within)}" if spec is not None and spec.goal else ""
        reports[name] = JourneyReport(name, spec.description.strip() if spec else "", goal)
    with store.reading() as conn:
        _enrollments(conn, reports)
        _steps(conn, reports, project, costs)
        _recipients(conn, reports)
        conversions = _conversions(conn)
        attribution, unattributed = _attribution(conn, conversions)
        daily = _daily(conversions)
        handovers = handover_stats(conn, now)
    for r in reports.values():
        r.lift = lift(r.converted, r.treated, r.converted_holdout, r.holdout)
    attribution = [a for a in attribution if a.journey in reports]
    return Report(now, [reports[n] for n in names], attribution, unattributed, daily, handovers, costs)
