"""The report as data: per journey and per step, read from the message log, enrollments,
suppressions, the consent ledger, handovers and events — grouped in SQL, one query per
figure, never one per contact. Every definition is in docs/report.md; in short:

- entered: enrollments; treated = not in the holdout; holdout = the control group.
- conversion: the journey's goal event within its window after entering (recorded by the
  engine for treated and holdout alike), one goal event converting one enrollment of a
  journey (converted.py); conversion rate = converted / treated.
- a member's **start** is its first message row of the journey — the moment it reached its
  first send step, whatever the checks decided: sent, deferred, suppressed, or `holdout` (a
  holdout member's row says when it would have been messaged). A conversion before the
  start is credited to nothing; an enrollment that never reached a send step has no start.
- lift: treated − holdout rate of conversions after the start, Newcombe's 95 % interval.
- incremental revenue: (revenue per treated member − revenue per holdout member) × treated
  members, revenue after the start, Welch/normal 95 % interval (incremental.py); incremental
  ROI = (incremental revenue − cost) / cost. The headline wherever there is a holdout.
- attributed revenue (`revenue`): treated conversions after the contact's first *delivered*
  message of the journey — what converters spent, not what the journey caused.
- cost = messages (SMS per billed segment) + offers (coupons redeemed) + fixed costs (costs.py).
- a goal whose events carry no `value` has no revenue: revenue figures and ROI are None.
- recipients: contacts with at least one sent message in the journey; unsubscribe / bounce
  rate: recipients who unsubscribed (suppression or revoked e-mail consent) / hard-bounced
  after their first message of the journey, / recipients.
- per step: reached (one final outbox row per arrival), sent, suppressed / skipped / failed
  by reason, deferrals by reason (each deferral is a row), conversions and revenue of the
  enrollments that were sent this step and converted after it, clicks and opens
  (engagement.py), cost; per split arm: splits.py.
- per first-touch source and overall: leads, MQLs, SQLs, customers, revenue, ad spend, CAC,
  ROI and the business KPIs (sources.py); the SMART objectives of the journeys and of
  policies.yaml (objectives.py).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping, Optional

from sqlalchemy import and_, case, exists, func, or_, select

from nurture.conditions import properties_match
from nurture.durations import format_duration
from nurture.store.times import aware
from nurture.reporting.attribution import MODELS, attribute, attribute_counts
from nurture.reporting.converted import counted_conversion
from nurture.reporting.costs import (SmsCount, charge_redemptions, charge_untracked, chunked, declared_offers,
                                     fixed_cost, redemptions, sms_segments_sent)
from nurture.reporting.engagement import CLICK, OPEN, engagement
from nurture.reporting.incremental import NONE, Estimate, Sample, incremental_revenue, roi
from nurture.reporting.lift import Lift, lift
from nurture.reporting.objectives import ObjectiveReport, journey_objectives, project_objectives
from nurture.reporting.sources import (Kpis, OffStandard, Percentiles, SourceRow, SourceTotal, Window, business_kpis,
                                      off_standard_utms, percentiles, source_rows, source_total)
from nurture.reporting.splits import SplitReport, split_reports
from nurture.spec.models import Comparison
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.models import FAILED, HOLDOUT, SENT, SKIPPED, SUPPRESSED
from nurture.store.tables import consent_t, enrollment_t, event_t, handover_t, message_t, suppression_t, version_t

ATTRIBUTION_LOOKBACK = timedelta(days=30)


@dataclass
class StepReport:
    step: str
    channel: str
    arm: Optional[str] = None  # the split arm the step belongs to (innermost), if any
    reached: int = 0
    sent: int = 0
    failed: int = 0
    holdout: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    conversions: int = 0
    revenue: float = 0.0
    cost: float = 0.0  # its sent messages (SMS: billed segments)
    segments: int = 0  # SMS: billed segments of the sent messages
    offer_cost: float = 0.0  # coupons of this step redeemed
    clicks: Optional[int] = None  # unique clickers; None: clicks are not tracked
    opens: Optional[int] = None  # unique openers; None: opens not tracked (or not an e-mail)

    @property
    def click_rate(self) -> Optional[float]:
        return self.clicks / self.sent if self.clicks is not None and self.sent else None

    @property
    def open_rate(self) -> Optional[float]:
        return self.opens / self.sent if self.opens is not None and self.sent else None


@dataclass
class JourneyReport:
    name: str
    description: str = ""
    goal: str = ""
    has_value: bool = False  # the goal's events carry a money `value`
    holdout_share: float = 0.0  # declared (`holdout: 10%`)
    started_at: Optional[datetime] = None  # first run (first recorded version, else first enrollment)
    entered: int = 0
    treated: int = 0
    holdout: int = 0
    converted: int = 0  # treated enrollments the engine recorded as converted
    converted_holdout: int = 0
    credited: int = 0  # … of them after their start (what lift compares)
    credited_holdout: int = 0
    attributed_conversions: int = 0  # treated conversions after a delivered message of the journey
    revenue: float = 0.0  # attributed revenue
    revenue_holdout: float = 0.0  # holdout revenue after the start
    treated_sample: Sample = field(default_factory=lambda: Sample(0))  # per-member revenue after the start
    holdout_sample: Sample = field(default_factory=lambda: Sample(0))
    recipients: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # channel → sent messages
    sms_segments: int = 0
    sms_estimated: int = 0  # SMS that could not be rendered again (counted as one segment)
    cost_messages: float = 0.0
    cost_offers: float = 0.0
    cost_fixed: float = 0.0
    offers_redeemed: int = 0
    unsubscribes: int = 0
    bounces: int = 0
    lift: Optional[Lift] = None
    steps: list[StepReport] = field(default_factory=list)
    splits: list[SplitReport] = field(default_factory=list)
    objectives: list[ObjectiveReport] = field(default_factory=list)  # the journey's SMART goals
    # minutes from the triggering event to the enrollment's first sent message
    speed_to_lead_minutes: Percentiles = field(default_factory=Percentiles)

    # -- costs
    @property
    def cost(self) -> float:
        return self.cost_messages + self.cost_offers + self.cost_fixed

    @property
    def costs(self) -> dict[str, float]:
        return {"messages": self.cost_messages, "offers": self.cost_offers, "fixed": self.cost_fixed,
                "total": self.cost}

    # -- rates
    @property
    def conversion_rate(self) -> float:
        return self.converted / self.treated if self.treated else 0.0

    @property
    def holdout_rate(self) -> float:
        return self.converted_holdout / self.holdout if self.holdout else 0.0

    @property
    def unsubscribe_rate(self) -> float:
        return self.unsubscribes / self.recipients if self.recipients else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.recipients if self.recipients else 0.0

    # -- money (None where the goal has no value)
    @property
    def attributed_revenue(self) -> Optional[float]:
        return self.revenue if self.has_value else None

    @property
    def incremental_revenue(self) -> Estimate:
        if not self.has_value or not self.holdout:
            return NONE
        return incremental_revenue(self.treated_sample, self.holdout_sample)

    @property
    def roi(self) -> Optional[float]:
        """Attributed ROI: (attributed revenue − cost) / cost."""
        if not self.has_value or self.cost <= 0:
            return None
        return (self.revenue - self.cost) / self.cost

    @property
    def incremental_roi(self) -> Estimate:
        return roi(self.incremental_revenue, self.cost)

    @property
    def roi_basis(self) -> str:
        """The headline: incremental where there is a holdout to compare with."""
        return "incremental" if self.holdout else "attributed"

    @property
    def headline_roi(self) -> Estimate:
        return self.incremental_roi if self.roi_basis == "incremental" else Estimate(self.roi)

    @property
    def revenue_per_recipient(self) -> Optional[float]:
        if not self.has_value:
            return None
        return self.revenue / self.recipients if self.recipients else 0.0

    @property
    def recommendation(self) -> Optional[str]:
        if self.holdout:
            return None
        if self.holdout_share:
            return (f"not proof: no holdout member yet (holdout {self.holdout_share:.0%} declared) — "
                    "attributed figures only")
        return (f"not proof: no holdout — add `holdout: 10%` to journeys/{self.name}.yaml to measure "
                "what the journey causes")


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
    clicks_tracked: bool = False
    opens_tracked: bool = False
    offers_unplaced: float = 0.0  # discounts no journey's message preceded
    # The project's lead sources and business KPIs over the report's period (sources.py) and its
    # policies.yaml objectives — in a report of every journey only (None / empty otherwise)
    sources: list[SourceRow] = field(default_factory=list)
    sources_total: Optional[SourceTotal] = None
    kpis: Optional[Kpis] = None
    objectives: list[ObjectiveReport] = field(default_factory=list)
    utm_off_standard: list[OffStandard] = field(default_factory=list)  # values policies.yaml `utm:` does not allow

    def journey(self, name: str) -> JourneyReport:
        return next(j for j in self.journeys if j.name == name)

    @property
    def period_start(self) -> Optional[datetime]:
        starts = [j.started_at for j in self.journeys if j.started_at is not None]
        return min(starts) if starts else None

    @property
    def total_revenue(self) -> float:
        """Attributed revenue of the journeys whose goal has a value."""
        return sum(j.revenue for j in self.journeys if j.has_value)

    @property
    def total_cost(self) -> float:
        return sum(j.cost for j in self.journeys)

    @property
    def total_incremental(self) -> Optional[float]:
        """Sum of the incremental revenue of the journeys that have one (no interval: the
        journeys share contacts, so their estimates are not independent)."""
        values = [j.incremental_revenue.value for j in self.journeys if j.incremental_revenue.value is not None]
        return sum(values) if values else None

    def totals(self) -> dict[str, Any]:
        """Sums over the journeys; each total ROI over the journeys that have that revenue figure
        (their revenue against their own costs), None where none has it."""
        valued = [j for j in self.journeys if j.has_value]
        measured = [j for j in self.journeys if j.incremental_revenue.value is not None]

        def ratio(revenue: float, cost: float) -> Optional[float]:
            return (revenue - cost) / cost if cost > 0 else None
        return {"entered": sum(j.entered for j in self.journeys), "treated": sum(j.treated for j in self.journeys),
                "holdout": sum(j.holdout for j in self.journeys),
                "converted": sum(j.converted for j in self.journeys),
                "attributed_revenue": self.total_revenue if valued else None,
                "incremental_revenue": self.total_incremental,
                "costs": {k: sum(j.costs[k] for j in self.journeys) for k in ("messages", "offers", "fixed", "total")},
                "roi": ratio(self.total_revenue, sum(j.cost for j in valued)) if valued else None,
                "incremental_roi": (ratio(self.total_incremental or 0.0, sum(j.cost for j in measured))
                                    if measured else None),
                # the cost each total ROI was computed over (a view showing the ROI beside the total
                # cost of every journey says so when the two differ)
                "roi_cost": sum(j.cost for j in valued) if valued else None,
                "incremental_roi_cost": sum(j.cost for j in measured) if measured else None}


# ---------------------------------------------------------------- enrollments and money


def _enrollments(conn: Any, reports: dict[str, JourneyReport], now: datetime) -> None:
    """The funnel as of `now`: enrollments that entered by then, conversions recorded by then."""
    converted = case((and_(enrollment_t.c.converted_at <= now, counted_conversion()), enrollment_t.c.converted_at))
    rows = conn.execute(select(enrollment_t.c.journey, enrollment_t.c.holdout, func.count(),
                               func.count(converted), func.min(enrollment_t.c.entered_at))
                        .where(enrollment_t.c.entered_at <= now)
                        .group_by(enrollment_t.c.journey, enrollment_t.c.holdout)).all()
    for journey, holdout, n, conv, first in rows:
        r = reports.get(journey)
        if r is None:
            continue
        r.entered += n
        first = aware(first)
        if first is not None and (r.started_at is None or first < r.started_at):
            r.started_at = first
        if holdout:
            r.holdout, r.converted_holdout = n, conv
        else:
            r.treated, r.converted = n, conv
    for journey, first in conn.execute(select(version_t.c.journey, func.min(version_t.c.created_at))
                                       .where(version_t.c.created_at <= now).group_by(version_t.c.journey)):
        r = reports.get(journey)
        first = aware(first)
        if r is not None and first is not None and (r.started_at is None or first < r.started_at):
            r.started_at = first


@dataclass
class _Conversion:
    enrollment: int
    journey: str
    holdout: bool
    contact: int
    at: datetime
    revenue: float
    start: Optional[datetime]  # first message row of the enrollment
    first_sent: Optional[datetime]  # first delivered message of the enrollment


def _converted(conn: Any, names: list[str], now: datetime) -> list[_Conversion]:
    """Every enrollment converted by `now`, with its start (first message row) and first
    delivered message."""
    converted_ids = select(enrollment_t.c.id).where(enrollment_t.c.converted_at <= now, counted_conversion(),
                                                    enrollment_t.c.journey.in_(names))
    first = (select(message_t.c.enrollment_id, func.min(message_t.c.created_at).label("start"),
                    func.min(case((and_(message_t.c.status == SENT, message_t.c.sent_at <= now),
                                   message_t.c.sent_at))).label("first_sent"))
             .where(message_t.c.enrollment_id.in_(converted_ids), message_t.c.created_at <= now)
             .group_by(message_t.c.enrollment_id).subquery())
    rows = conn.execute(select(enrollment_t.c.id, enrollment_t.c.journey, enrollment_t.c.holdout,
                               enrollment_t.c.contact_id, enrollment_t.c.converted_at, enrollment_t.c.revenue,
                               first.c.start, first.c.first_sent)
                        .select_from(enrollment_t.outerjoin(first, first.c.enrollment_id == enrollment_t.c.id))
                        .where(enrollment_t.c.converted_at <= now, counted_conversion(),
                               enrollment_t.c.journey.in_(names))
                        .order_by(enrollment_t.c.id)).all()
    return [_Conversion(eid, journey, bool(holdout), cid, aware(at), float(revenue or 0), aware(start), aware(sent))
            for eid, journey, holdout, cid, at, revenue, start, sent in rows]


def _money(reports: dict[str, JourneyReport], conversions: list[_Conversion]) -> None:
    """Credited conversions (after the start) for lift and incremental revenue; attributed
    conversions (after the first delivered message) for the attributed figures."""
    values: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for c in conversions:
        r = reports[c.journey]
        if c.start is not None and c.at >= c.start:
            values[(c.journey, c.holdout)].append(c.revenue)
            if c.holdout:
                r.credited_holdout += 1
                r.revenue_holdout += c.revenue
            else:
                r.credited += 1
        if not c.holdout and c.first_sent is not None and c.at >= c.first_sent:
            r.attributed_conversions += 1
            r.revenue += c.revenue
    for name, r in reports.items():
        r.treated_sample = Sample.of(values[(name, False)], r.treated)
        r.holdout_sample = Sample.of(values[(name, True)], r.holdout)
        r.lift = lift(r.credited, r.treated, r.credited_holdout, r.holdout)


def _goal_events(conn: Any, project: ProjectSpec, conversions: list[_Conversion]) -> dict[int, dict]:
    """enrollment → the properties of the goal event that converted it (when still stored)."""
    goal_of = {name: spec.goal.event for name, spec in project.journeys.items() if spec.goal is not None}
    wanted: dict[tuple[int, str], list[_Conversion]] = defaultdict(list)
    for c in conversions:
        if c.journey in goal_of:
            wanted[(c.contact, goal_of[c.journey])].append(c)
    contacts = sorted({cid for cid, _ in wanted})
    names = sorted(set(goal_of.values()))
    out: dict[int, dict] = {}
    for part in chunked(contacts):
        for cid, name, at, props in conn.execute(
                select(event_t.c.contact_id, event_t.c.name, event_t.c.occurred_at, event_t.c.properties)
                .where(event_t.c.contact_id.in_(part), event_t.c.name.in_(names))):
            at = aware(at)
            for c in wanted.get((cid, name), ()):
                if c.at == at:
                    out.setdefault(c.enrollment, dict(props or {}))
    return out


def _has_value(conn: Any, project: ProjectSpec, reports: dict[str, JourneyReport],
               conversions: list[_Conversion], goal_props: Mapping[int, dict], now: datetime) -> None:
    """A goal has a value when a conversion brought revenue or a goal event carries `value`."""
    for c in conversions:
        if c.revenue or "value" in goal_props.get(c.enrollment, {}):
            reports[c.journey].has_value = True
    present = Comparison.model_validate({"exists": True})
    for name, r in reports.items():
        spec = project.journeys.get(name)
        if r.has_value or spec is None or spec.goal is None:
            continue
        r.has_value = conn.execute(
            select(event_t.c.id).where(event_t.c.name == spec.goal.event, event_t.c.occurred_at <= now,
                                       properties_match(event_t.c.properties, {"value": present})).limit(1)
        ).first() is not None


# ---------------------------------------------------------------- steps


def _steps(conn: Any, reports: dict[str, JourneyReport], project: ProjectSpec, costs: dict[str, float],
           sms: Mapping[tuple[str, str], SmsCount], now: datetime) -> dict[tuple[str, str], StepReport]:
    from nurture.compiler import compile_journey
    from nurture.messages import split_arms
    steps: dict[tuple[str, str], StepReport] = {}
    order = {}
    for name in reports:
        journey = project.journeys.get(name)
        if journey is None:
            continue
        plan = compile_journey(journey)
        arms = split_arms(journey.steps)
        for i, sid in enumerate(plan.order):
            node = plan.nodes[sid]
            if node.kind == "send":
                # a fallback step is labelled with its channels in order ("whatsapp/sms/email");
                # its sends and costs are counted per channel used, below
                steps[(name, sid)] = StepReport(sid, "/".join(node.step.send.options), arms.get(sid))
                order[(name, sid)] = i
    # as of `now`: rows written by then; one sent only later was still waiting then
    status = case((and_(message_t.c.status == SENT, message_t.c.sent_at > now), "queued"), else_=message_t.c.status)
    group = (message_t.c.journey, message_t.c.step_id, message_t.c.channel, message_t.c.attempt_key,
             status, message_t.c.reason)
    rows = conn.execute(select(*group, func.count()).where(message_t.c.enrollment_id.isnot(None),
                                                           message_t.c.journey.in_(list(reports)),
                                                           message_t.c.created_at <= now)
                        .group_by(*group)).all()
    for journey, step, channel, attempt_key, status, reason, n in rows:
        final = attempt_key == "send"  # 'defer:N' rows record deferrals
        s = steps.setdefault((journey, step), StepReport(step, channel))
        order.setdefault((journey, step), 10_000)
        reason = reason or "-"
        if not final:
            s.deferred[reason] = s.deferred.get(reason, 0) + n
            continue
        s.reached += n
        if status == SENT:
            s.sent += n
            r = reports[journey]
            r.sent[channel] = r.sent.get(channel, 0) + n
            if channel != "sms":
                s.cost += n * costs.get(channel, 0.0)
        elif status == FAILED:
            s.failed += n
        elif status == HOLDOUT:
            s.holdout += n
        elif status in (SUPPRESSED, SKIPPED):
            bucket = s.suppressed if status == SUPPRESSED else s.skipped
            bucket[reason] = bucket.get(reason, 0) + n
    for (journey, step), count in sms.items():
        s = steps.setdefault((journey, step), StepReport(step, "sms"))
        order.setdefault((journey, step), 10_000)
        s.segments = count.segments
        s.cost += count.segments * costs.get("sms", 0.0)
        reports[journey].sms_segments += count.segments
        reports[journey].sms_estimated += count.estimated
    for journey, step, n, revenue in conn.execute(
            select(message_t.c.journey, message_t.c.step_id, func.count(func.distinct(enrollment_t.c.id)),
                   func.coalesce(func.sum(enrollment_t.c.revenue), 0.0))
            .select_from(message_t.join(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id))
            .where(message_t.c.status == SENT, enrollment_t.c.converted_at <= now, counted_conversion(),
                   enrollment_t.c.converted_at >= message_t.c.sent_at, message_t.c.journey.in_(list(reports)))
            .group_by(message_t.c.journey, message_t.c.step_id)):
        if (journey, step) in steps:
            steps[(journey, step)].conversions = n
            steps[(journey, step)].revenue = float(revenue or 0)
    for (journey, _), s in sorted(steps.items(), key=lambda kv: (kv[0][0], order[kv[0]], kv[0][1])):
        reports[journey].steps.append(s)
        reports[journey].cost_messages += s.cost
    return steps


def _engagement(conn: Any, steps: Mapping[tuple[str, str], StepReport], now: datetime) -> tuple[bool, bool]:
    sent_to: dict[tuple[str, str], set] = defaultdict(set)
    names = sorted({j for j, _ in steps})
    for journey, step, cid in conn.execute(
            select(message_t.c.journey, message_t.c.step_id, message_t.c.contact_id).distinct()
            .where(message_t.c.status == SENT, message_t.c.sent_at <= now, message_t.c.journey.in_(names))):
        sent_to[(journey, step)].add(cid)
    counts, tracked = engagement(conn, now, sent_to)
    for key, s in steps.items():
        if tracked[CLICK]:
            s.clicks = counts[CLICK].get(key, 0)
        if tracked[OPEN] and "email" in s.channel.split("/"):
            s.opens = counts[OPEN].get(key, 0)
    return tracked[CLICK], tracked[OPEN]


def _speed_to_lead(conn: Any, reports: dict[str, JourneyReport], now: datetime) -> None:
    """Per journey: minutes from an enrollment's trigger event (its `occurred_at`) to the
    enrollment's first sent message, over the event-triggered enrollments that were sent one
    (a first message dated before its event — a client's clock ahead — is left out, as in the
    speed-to-lead KPI)."""
    first = (select(message_t.c.enrollment_id.label("eid"), func.min(message_t.c.sent_at).label("at"))
             .where(message_t.c.status == SENT, message_t.c.enrollment_id.isnot(None), message_t.c.sent_at <= now,
                    message_t.c.journey.in_(list(reports)))  # (a message is of its enrollment's journey)
             .group_by(message_t.c.enrollment_id).subquery("first_sent"))
    rows = conn.execute(select(enrollment_t.c.journey, event_t.c.occurred_at, first.c.at)
                        .select_from(enrollment_t.join(first, first.c.eid == enrollment_t.c.id)
                                     .join(event_t, event_t.c.id == enrollment_t.c.trigger_event_pk))
                        .where(enrollment_t.c.journey.in_(list(reports))))
    minutes: dict[str, list[float]] = defaultdict(list)
    for journey, occurred_at, sent_at in rows:
        delay = (aware(sent_at) - aware(occurred_at)).total_seconds() / 60
        if delay >= 0:
            minutes[journey].append(delay)
    for journey, values in minutes.items():
        reports[journey].speed_to_lead_minutes = percentiles(values)


def _recipients(conn: Any, reports: dict[str, JourneyReport], now: datetime) -> None:
    first = (select(message_t.c.journey, message_t.c.contact_id, func.min(message_t.c.sent_at).label("first_sent"))
             .where(message_t.c.status == SENT, message_t.c.enrollment_id.isnot(None), message_t.c.sent_at <= now,
                    message_t.c.journey.in_(list(reports)))
             .group_by(message_t.c.journey, message_t.c.contact_id).subquery())
    for journey, n in conn.execute(select(first.c.journey, func.count()).group_by(first.c.journey)):
        if journey in reports:
            reports[journey].recipients = n

    def suppressed_after(reasons: list[str]) -> Any:
        return exists(select(suppression_t.c.id).where(suppression_t.c.contact_id == first.c.contact_id,
                                                       suppression_t.c.reason.in_(reasons),
                                                       suppression_t.c.created_at >= first.c.first_sent,
                                                       suppression_t.c.created_at <= now))

    revoked = exists(select(consent_t.c.id).where(consent_t.c.contact_id == first.c.contact_id,
                                                  consent_t.c.channel == "email", consent_t.c.status == "revoked",
                                                  consent_t.c.purpose == "marketing",
                                                  consent_t.c.recorded_at >= first.c.first_sent,
                                                  consent_t.c.recorded_at <= now))
    for attr, cond in (("unsubscribes", or_(suppressed_after(["unsubscribed"]), revoked)),
                       ("bounces", suppressed_after(["hard_bounce"]))):
        for journey, n in conn.execute(select(first.c.journey, func.count()).where(cond).group_by(first.c.journey)):
            if journey in reports:
                setattr(reports[journey], attr, n)


# ---------------------------------------------------------------- conversions across journeys


def _conversions(conn: Any, now: datetime, names: list[str]) -> list[tuple[int, datetime, float, bool]]:
    """Each purchase once, by `now`: (contact, converted_at) deduplicated over every journey, max
    revenue, and whether one of the journeys `names` recorded it (the daily chart and the
    unattributed conversions of a report of some journeys are theirs; attribution looks at
    every journey's conversions, so a journey's credit is the same in every report)."""
    ours = func.max(case((enrollment_t.c.journey.in_(names), 1), else_=0))
    rows = conn.execute(select(enrollment_t.c.contact_id, enrollment_t.c.converted_at, func.max(enrollment_t.c.revenue),
                               ours)
                        .where(enrollment_t.c.converted_at <= now)
                        .group_by(enrollment_t.c.contact_id, enrollment_t.c.converted_at)
                        .order_by(enrollment_t.c.converted_at, enrollment_t.c.contact_id)).all()
    return [(cid, aware(at), float(rev or 0), bool(mine)) for cid, at, rev, mine in rows]


def _touches(conn: Any, contacts: list[int], now: datetime) -> dict[int, list[tuple[datetime, str, str]]]:
    """contact → its messages delivered by `now` (sent_at, journey, step), in time order."""
    touches: dict[int, list[tuple[datetime, str, str]]] = defaultdict(list)
    for part in chunked(contacts):
        for cid, sent_at, journey, step in conn.execute(
                select(message_t.c.contact_id, message_t.c.sent_at, message_t.c.journey, message_t.c.step_id)
                .where(message_t.c.contact_id.in_(part), message_t.c.status == SENT, message_t.c.sent_at <= now)
                .order_by(message_t.c.contact_id, message_t.c.sent_at, message_t.c.id)):
            touches[cid].append((aware(sent_at), journey, step))
    return touches


def _attribution(conversions: list[tuple[int, datetime, float, bool]], touches: Mapping[int, list]
                 ) -> tuple[list[AttributionRow], tuple[int, float]]:
    paths: list[tuple[float, list[tuple[str, str]]]] = []
    unattributed = [0, 0.0]
    for cid, at, revenue, ours in conversions:
        path = [(j, s) for sent_at, j, s in touches.get(cid, []) if at - ATTRIBUTION_LOOKBACK <= sent_at <= at]
        if not path and ours:
            unattributed[0] += 1
            unattributed[1] += revenue
        paths.append((revenue, path))
    by_revenue = attribute(paths)
    by_count = attribute_counts(p for _, p in paths)
    keys = sorted({k for m in MODELS for k in by_count[m]})
    rows = [AttributionRow(j, s, {m: by_count[m].get((j, s), 0.0) for m in MODELS},
                           {m: by_revenue[m].get((j, s), 0.0) for m in MODELS}) for j, s in keys]
    return rows, (unattributed[0], unattributed[1])


def _daily(conversions: list[tuple[int, datetime, float, bool]]) -> list[tuple[date, int, float]]:
    """Conversions per day of the report's journeys, each purchase once."""
    days: dict[date, list] = {}
    for _, at, revenue, ours in conversions:
        if not ours:
            continue
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


def _offers(conn: Any, project: ProjectSpec, reports: dict[str, JourneyReport],
            steps: Mapping[tuple[str, str], StepReport], conversions: list[_Conversion],
            goal_props: Mapping[int, dict], touches: Mapping[int, list], now: datetime) -> float:
    offers = declared_offers(project, project.journeys)
    goal_names = {spec.goal.event for spec in project.journeys.values() if spec.goal is not None}
    events = redemptions(conn, now, goal_names)
    others = sorted({journey for journey, _ in offers} - set(reports))
    if others:  # a purchase is charged once, to the latest offer of any journey: theirs count too
        more = _converted(conn, others, now)
        conversions = [*conversions, *more]
        goal_props = {**goal_props, **_goal_events(conn, project, more)}
    credited = [(c.journey, c.contact, c.at, c.revenue, goal_props.get(c.enrollment, {})) for c in conversions
                if not c.holdout and c.first_sent is not None and c.at >= c.first_sent]
    missing = sorted(({cid for _, cid, _, _ in events} | {cid for _, cid, _, _, _ in credited}) - set(touches))
    touches = {**touches, **_touches(conn, missing, now)} if missing else touches
    charges, unplaced = charge_redemptions(events, offers, touches, ATTRIBUTION_LOOKBACK,
                                           _first_runs(conn, {journey for journey, _ in offers}, now))
    charges += charge_untracked(credited, offers, touches, ATTRIBUTION_LOOKBACK)
    for charge in charges:
        r = reports.get(charge.journey)
        if r is None:
            continue
        r.cost_offers += charge.amount
        r.offers_redeemed += 1
        if charge.step is not None and (charge.journey, charge.step) in steps:
            steps[(charge.journey, charge.step)].offer_cost += charge.amount
    return unplaced


def _first_runs(conn: Any, journeys: set[str], now: datetime) -> dict[str, datetime]:
    """journey → its first run by `now` (its first recorded version, else its first enrollment)."""
    first: dict[str, datetime] = {}
    for table, column in ((version_t, version_t.c.created_at), (enrollment_t, enrollment_t.c.entered_at)):
        for journey, at in conn.execute(select(table.c.journey, func.min(column)).where(
                table.c.journey.in_(sorted(journeys)), column <= now).group_by(table.c.journey)):
            if at is not None and (journey not in first or aware(at) < first[journey]):
                first[journey] = aware(at)
    return first


# ---------------------------------------------------------------- handovers


def handover_stats(conn: Any, now: datetime) -> HandoverStats:
    """MQLs handed to sales and whether sales contacted them (`sales_contacted`) within the SLA.
    A holdout member's row at a handover step is no handover (nurture.scoring.handover.hold_out)."""
    stats = HandoverStats()
    contacted = (select(func.min(event_t.c.occurred_at))
                 .where(event_t.c.contact_id == handover_t.c.contact_id, event_t.c.name == "sales_contacted",
                        event_t.c.occurred_at >= handover_t.c.created_at, event_t.c.occurred_at <= now)
                 .scalar_subquery())
    for status, due, first in conn.execute(select(handover_t.c.status, handover_t.c.sla_due_at, contacted)
                                           .where(handover_t.c.created_at <= now, handover_t.c.status != HOLDOUT)):
        stats.total += 1
        if status in ("delivered", "pending", "failed"):
            setattr(stats, status, getattr(stats, status) + 1)
        if first is not None:
            if aware(first) <= aware(due):
                stats.contacted_within_sla += 1
            else:
                stats.contacted_late += 1
        elif now > aware(due):
            stats.overdue += 1
        else:
            stats.open_within_sla += 1
    return stats


def build_report(store: Store, project: ProjectSpec, now: Optional[datetime] = None,
                 journeys: Optional[list[str]] = None, env: Optional[Mapping[str, str]] = None,
                 attribution: bool = True) -> Report:
    """`env` (default: the process environment) gives the public URL and secret the SMS links
    were rendered with — their length counts in an SMS's segments. `attribution=False`: the
    journeys' own figures only — no attribution across journeys, no daily conversions (the
    summary a tick writes for each journey: every conversion's touches are most of a report)."""
    now = now or datetime.now(timezone.utc)
    env = os.environ if env is None else env
    names = journeys or sorted(project.journeys)
    costs = dict(project.policies.unit_costs)
    reports: dict[str, JourneyReport] = {}
    for name in names:
        spec = project.journeys.get(name)
        goal = f"{spec.goal.event} within {format_duration(spec.goal.within)}" if spec is not None and spec.goal else ""
        reports[name] = JourneyReport(name, spec.description.strip() if spec else "", goal,
                                      holdout_share=spec.holdout if spec else 0.0)
    with store.reading() as conn:
        _enrollments(conn, reports, now)
        converted = _converted(conn, names, now)
        _money(reports, converted)
        goal_props = _goal_events(conn, project, converted)
        _has_value(conn, project, reports, converted, goal_props, now)
        sms = sms_segments_sent(conn, project, names, env, store, now)
        steps = _steps(conn, reports, project, costs, sms, now)
        clicks_tracked, opens_tracked = _engagement(conn, steps, now)
        _recipients(conn, reports, now)
        _speed_to_lead(conn, reports, now)
        conversions = _conversions(conn, now, names) if attribution else []
        touches = _touches(conn, sorted({c for c, _, _, _ in conversions}), now)
        rows, unattributed = _attribution(conversions, touches) if attribution else ([], (0, 0.0))
        daily = _daily(conversions)
        unplaced = _offers(conn, project, reports, steps, converted, goal_props, touches, now)
        handovers = handover_stats(conn, now)
        for name, r in reports.items():
            spec = project.journeys.get(name)
            if spec is not None:
                r.cost_fixed = fixed_cost(spec.fixed_costs, r.started_at, now)
                r.splits = split_reports(conn, _plan(spec), now, r.has_value)
            r.objectives = journey_objectives(conn, project, r, now)
        business = _business(conn, project, reports, now) if journeys is None else {}
    rows = [a for a in rows if a.journey in reports]
    return Report(now, [reports[n] for n in names], rows, unattributed, daily, handovers, costs,
                  clicks_tracked, opens_tracked, unplaced, **business)


def _business(conn: Any, project: ProjectSpec, reports: Mapping[str, JourneyReport], now: datetime) -> dict:
    """The project's figures, over the report's period: lead sources (with every journey's
    cost beside the ad spend), business KPIs, policies.yaml objectives. Not in a report limited
    to some journeys (`--journey`, the per-run summary): they are not about those journeys."""
    window = Window(min((r.started_at for r in reports.values() if r.started_at), default=None), now)
    sources, other_currencies = source_rows(conn, window, now, project.policies.currency, project.policies.timezone)
    return {"sources": sources, "kpis": business_kpis(conn, window, now),
            "sources_total": source_total(sources, other_currencies, sum(r.cost for r in reports.values())),
            "objectives": project_objectives(conn, project, now),
            "utm_off_standard": off_standard_utms(conn, project.policies.utm)}


def _plan(spec: Any) -> Any:
    from nurture.compiler import compile_journey
    return compile_journey(spec)
