"""SMART objectives measured: each objective's metric over its window, its baseline, target,
progress, a linear forecast at the deadline and whether it is on track. Definitions:
docs/report.md, "Objectives".

- the window: from `start` (default: the day after the baseline period, else the journey's
  first run — for policies.yaml objectives the earliest lead) to the deadline (its whole day),
  measured up to the report's time. Dates are days in the project's time zone.
- baseline: the metric over the baseline period; a count or an amount of money is scaled pro
  rata to the objective's length (start → deadline), a rate is not.
- target: the number written, or baseline × (1 + change) for `+20%`.
- progress = current / target; forecast: a count or amount extrapolated linearly to the
  deadline (current × length / elapsed), a rate as it is now; on track: forecast ≥ target
  (≤ for LOWER_IS_BETTER). After the deadline the final value decides.

Every figure that cannot exist (no start yet, no baseline data, a target of 0) is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Optional, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, exists, func, or_, select

from nurture.store.times import aware
from nurture.reporting.converted import counted_conversion
from nurture.reporting.costs import DAYS_PER
from nurture.reporting.engagement import CLICK, step_of
from nurture.reporting.incremental import Sample, incremental_revenue
from nurture.reporting.sources import (DEMO_REQUEST, Window, clv, count_events, facts_subquery, lead_velocity_rate,
                                       leads_subquery, mql_to_sql_rate, source_rows, source_total,
                                       speed_to_lead_minutes, speed_to_sales_minutes, time_to_first_value_days)
from nurture.spec.models import LOWER_IS_BETTER, OBJECTIVE_METRICS, FixedCost, Objective
from nurture.spec.project import ProjectSpec
from nurture.store.models import SENT
from nurture.store.tables import consent_t, enrollment_t, event_t, message_t, suppression_t

class JourneyFigures(Protocol):
    """What the journey objectives read of a journey's report (nurture.reporting.report's
    JourneyReport has it; report.py imports this module, so it is named by its shape here)."""
    name: str
    has_value: bool
    sent: dict[str, int]
    sms_segments: int
    started_at: Optional[datetime]

# Counts and amounts of money add up over time: their baseline is scaled to the objective's
# length and their forecast extrapolated. Every other metric is a rate, a ratio or a median.
ADDITIVE = frozenset({"conversions", "revenue", "incremental_revenue", "cost", "recipients", "clicks", "mqls",
                      "demo_requests", "leads", "sqls", "customers", "spend"})
UNITS = {"revenue": "money", "incremental_revenue": "money", "cost": "money", "spend": "money", "cac": "money",
         "cost_per_lead": "money", "clv": "money", "roi": "ratio", "incremental_roi": "ratio",
         "conversion_rate": "rate", "click_rate": "rate", "unsubscribe_rate": "rate", "mql_to_sql_rate": "rate",
         "lead_velocity_rate": "rate", "time_to_first_value_days": "days", "speed_to_lead_minutes": "minutes",
         "speed_to_sales_minutes": "minutes"}  # everything else: a count

Measure = Callable[[str, datetime, datetime], Optional[float]]  # (metric, start, end) → value


@dataclass
class ObjectiveReport:
    metric: str
    deadline: date
    name: Optional[str] = None
    owner: Optional[str] = None
    target: Optional[float] = None  # resolved: a relative target is baseline × (1 + relative)
    relative: Optional[float] = None  # `+20%` → 0.2
    start: Optional[datetime] = None
    baseline: Optional[float] = None  # scaled to the objective's length for counts and money
    baseline_period: Optional[tuple[date, date]] = None
    current: Optional[float] = None
    forecast: Optional[float] = None
    deadline_passed: bool = False

    @property
    def unit(self) -> str:
        return UNITS.get(self.metric, "count")

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def progress(self) -> Optional[float]:
        """current / target as a fraction, not capped."""
        if self.current is None or not self.target:
            return None
        return self.current / self.target

    @property
    def on_track(self) -> Optional[bool]:
        if self.forecast is None or self.target is None:
            return None
        return self.forecast <= self.target if self.lower_is_better else self.forecast >= self.target


# ---------------------------------------------------------------- evaluation (pure over a measure)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """Midnight at the start of `day` in the project's time zone, as UTC."""
    return datetime.combine(day, time(0), tz).astimezone(timezone.utc)


def _span(a: datetime, b: datetime, tz: ZoneInfo) -> float:
    """Seconds from `a` to `b` on the project's wall clock: whole days are whole days (86,400
    seconds each), also across a daylight-saving change (October in Berlin is 31 days, not 31
    days and an hour: docs/report.md "Dates are whole days in the project's time zone")."""
    local = (b.astimezone(tz).replace(tzinfo=None) - a.astimezone(tz).replace(tzinfo=None))
    return local.total_seconds()


def evaluate(objective: Objective, measure: Measure, now: datetime, tz: ZoneInfo,
             default_start: Optional[datetime]) -> ObjectiveReport:
    metric = objective.metric
    out = ObjectiveReport(metric, objective.deadline, objective.name, objective.owner, relative=objective.relative)
    end = day_start(objective.deadline + timedelta(days=1), tz)  # the deadline's day counts
    if objective.start is not None:
        start: Optional[datetime] = day_start(objective.start, tz)
    elif objective.baseline is not None:
        start = day_start(objective.baseline.to + timedelta(days=1), tz)
    else:
        start = default_start
    out.start = start
    out.deadline_passed = now >= end
    length = _span(start, end, tz) if start is not None else 0.0
    if objective.baseline is not None:
        period = objective.baseline
        out.baseline_period = (period.from_, period.to)
        b_start, b_end = day_start(period.from_, tz), min(day_start(period.to + timedelta(days=1), tz), now)
        value = measure(metric, b_start, b_end) if b_end > b_start else None
        if value is not None and metric in ADDITIVE:  # scaled pro rata to the objective's length
            measured = _span(b_start, b_end, tz)
            value = value * length / measured if length > 0 and measured > 0 else None
        out.baseline = value
    if objective.relative is None:
        out.target = float(objective.target)
    elif out.baseline is not None:
        out.target = out.baseline * (1 + objective.relative)
    if start is None or now <= start or end <= start:
        return out
    measured_to = min(now, end)
    out.current = measure(metric, start, measured_to)
    if out.current is None:
        return out
    if metric in ADDITIVE and not out.deadline_passed:
        # What does not recur (a fixed cost `per: once`) is not extrapolated: only the rest.
        once = getattr(measure, "once", None)
        fixed = min(once(metric, start, measured_to), out.current) if once is not None else 0.0
        elapsed = _span(start, measured_to, tz)
        # no wall-clock time elapsed yet (or less than none: the hour repeated when clocks go
        # back, after a start in the hour before): no rate to extrapolate — null, not a division by 0
        out.forecast = fixed + (out.current - fixed) * length / elapsed if elapsed > 0 else None
    else:
        out.forecast = out.current
    return out


# ---------------------------------------------------------------- journey metrics


def _window_fixed_cost(costs: list[FixedCost], started: Optional[datetime], start: datetime, end: datetime,
                       now: datetime) -> float:
    """Fixed costs pro rata over the part of [start, end) the journey ran; `once` where its first run falls in it."""
    if started is None:
        return 0.0
    a, b = max(start, started), min(end, now)
    days = max((b - a).total_seconds(), 0.0) / 86400
    total = 0.0
    for c in costs:
        if c.per == "once":
            total += c.amount if start <= started < end else 0.0
        else:
            total += c.amount * days / DAYS_PER[c.per]
    return total


class JourneyMeasure:
    """A journey's objective metrics over a window, from its enrollments, messages and events."""

    def __init__(self, conn: Any, project: ProjectSpec, report: JourneyFigures, now: datetime):
        self.conn, self.project, self.r, self.now = conn, project, report, now
        self.name = report.name
        self.spec = project.journeys.get(report.name)

    def __call__(self, metric: str, start: datetime, end: datetime) -> Optional[float]:
        if metric not in OBJECTIVE_METRICS["journey"]:  # validation refuses it; never a crash here
            return None
        return getattr(self, metric)(start, end)

    # -- helpers
    def _treated(self) -> Any:
        return and_(enrollment_t.c.journey == self.name, enrollment_t.c.holdout.is_(False))

    def _member_before(self, contact: Any, at: Any) -> Any:
        """SQL: the contact entered the journey (outside the holdout) at or before `at`."""
        return exists(select(enrollment_t.c.id).where(self._treated(), enrollment_t.c.contact_id == contact,
                                                      enrollment_t.c.entered_at <= at))

    def _scalar(self, stmt: Any) -> float:
        return float(self.conn.execute(stmt).scalar() or 0)

    def _member_start(self) -> Any:
        """enrollment → its start: its first message row of the journey (docs/report.md)."""
        return (select(message_t.c.enrollment_id.label("eid"), func.min(message_t.c.created_at).label("at"))
                .where(message_t.c.journey == self.name, message_t.c.enrollment_id.isnot(None))
                .group_by(message_t.c.enrollment_id).subquery("member_start"))

    def _credited(self, start: Any) -> Any:
        """SQL: the enrollment's conversion counts (one per goal event, converted.py) and came at
        or after its start — the report's rule of what a journey can have caused."""
        return and_(counted_conversion(), start.c.at.isnot(None), enrollment_t.c.converted_at >= start.c.at)

    def _first_sent(self) -> Any:
        return (select(message_t.c.contact_id.label("cid"), func.min(message_t.c.sent_at).label("at"))
                .where(message_t.c.journey == self.name, message_t.c.status == SENT,
                       message_t.c.enrollment_id.isnot(None))
                .group_by(message_t.c.contact_id).subquery("first_sent"))

    # -- the metrics (OBJECTIVE_METRICS["journey"])
    def conversions(self, start: datetime, end: datetime) -> float:
        """Treated conversions in the window after the member's start (a purchase during the
        first wait, before any message, is credited to nothing — as in the overview)."""
        member = self._member_start()
        return self._scalar(select(func.count())
                            .select_from(enrollment_t.join(member, member.c.eid == enrollment_t.c.id))
                            .where(self._treated(), enrollment_t.c.converted_at >= start,
                                   enrollment_t.c.converted_at < end, self._credited(member)))

    def conversion_rate(self, start: datetime, end: datetime) -> Optional[float]:
        member = self._member_start()
        entered, converted = self.conn.execute(
            select(func.count(), _count(and_(enrollment_t.c.converted_at < end, self._credited(member))))
            .select_from(enrollment_t.outerjoin(member, member.c.eid == enrollment_t.c.id))
            .where(self._treated(), enrollment_t.c.entered_at >= start, enrollment_t.c.entered_at < end)).one()
        return converted / entered if entered else None

    def revenue(self, start: datetime, end: datetime) -> Optional[float]:
        if not self.r.has_value:
            return None
        delivered = exists(select(message_t.c.id).where(message_t.c.enrollment_id == enrollment_t.c.id,
                                                        message_t.c.status == SENT,
                                                        message_t.c.sent_at <= enrollment_t.c.converted_at))
        return self._scalar(select(func.sum(enrollment_t.c.revenue)).where(
            self._treated(), enrollment_t.c.converted_at >= start, enrollment_t.c.converted_at < end, delivered,
            counted_conversion()))

    def incremental_revenue(self, start: datetime, end: datetime) -> Optional[float]:
        if not self.r.has_value:
            return None
        first = self._member_start()
        credited = and_(enrollment_t.c.converted_at < end, self._credited(first))
        value = func.coalesce(func.sum(case((credited, enrollment_t.c.revenue), else_=0.0)), 0.0)
        square = func.coalesce(func.sum(case((credited, enrollment_t.c.revenue * enrollment_t.c.revenue), else_=0.0)), 0.0)
        samples = {bool(h): Sample(n, float(t), float(sq)) for h, n, t, sq in self.conn.execute(
            select(enrollment_t.c.holdout, func.count(), value, square)
            .select_from(enrollment_t.outerjoin(first, first.c.eid == enrollment_t.c.id))
            .where(enrollment_t.c.journey == self.name, enrollment_t.c.entered_at >= start,
                   enrollment_t.c.entered_at < end)
            .group_by(enrollment_t.c.holdout))}
        if not samples.get(True) or not samples.get(False):
            return None
        return incremental_revenue(samples[False], samples[True]).value

    def cost(self, start: datetime, end: datetime) -> float:
        """Messages sent in the window (SMS at the journey's billed segments per SMS) + fixed
        costs pro rata; offers are not dated, so not counted."""
        units = self.project.policies.unit_costs
        sms_sent = self.r.sent.get("sms", 0)
        per_sms = self.r.sms_segments / sms_sent if sms_sent else 1.0
        total = 0.0
        for channel, n in self.conn.execute(
                select(message_t.c.channel, func.count())
                .where(message_t.c.journey == self.name, message_t.c.status == SENT,
                       message_t.c.sent_at >= start, message_t.c.sent_at < end)
                .group_by(message_t.c.channel)):
            total += n * units.get(channel, 0.0) * (per_sms if channel == "sms" else 1.0)
        fixed = self.spec.fixed_costs if self.spec is not None else []
        return total + _window_fixed_cost(list(fixed), self.r.started_at, start, end, self.now)

    def once(self, metric: str, start: datetime, end: datetime) -> float:
        """The part of `metric` over [start, end) that does not recur: `cost`'s fixed costs
        `per: once` (a forecast does not extrapolate them)."""
        if metric != "cost" or self.spec is None:
            return 0.0
        once = [c for c in self.spec.fixed_costs if c.per == "once"]
        return _window_fixed_cost(once, self.r.started_at, start, end, self.now)

    def cac(self, start: datetime, end: datetime) -> Optional[float]:
        conversions = self.conversions(start, end)
        return self.cost(start, end) / conversions if conversions else None

    def roi(self, start: datetime, end: datetime) -> Optional[float]:
        return _roi(self.revenue(start, end), self.cost(start, end))

    def incremental_roi(self, start: datetime, end: datetime) -> Optional[float]:
        return _roi(self.incremental_revenue(start, end), self.cost(start, end))

    def recipients(self, start: datetime, end: datetime) -> float:
        first = self._first_sent()
        return self._scalar(select(func.count()).select_from(first).where(first.c.at >= start, first.c.at < end))

    def _sent_in(self, start: datetime, end: datetime) -> Any:
        return (select(message_t.c.contact_id).distinct()
                .where(message_t.c.journey == self.name, message_t.c.status == SENT,
                       message_t.c.sent_at >= start, message_t.c.sent_at < end))

    def clicks(self, start: datetime, end: datetime) -> float:
        received = exists(select(message_t.c.id).where(message_t.c.contact_id == event_t.c.contact_id,
                                                       message_t.c.journey == self.name, message_t.c.status == SENT,
                                                       message_t.c.sent_at <= event_t.c.occurred_at))
        clickers = {cid for cid, props in self.conn.execute(
            select(event_t.c.contact_id, event_t.c.properties)
            .where(event_t.c.name == CLICK, event_t.c.occurred_at >= start, event_t.c.occurred_at < end, received))
            if (step_of(props or {}) or ("", ""))[0] == self.name}
        return float(len(clickers))

    def click_rate(self, start: datetime, end: datetime) -> Optional[float]:
        sent_to = self._scalar(select(func.count()).select_from(self._sent_in(start, end).subquery()))
        return self.clicks(start, end) / sent_to if sent_to else None

    def unsubscribe_rate(self, start: datetime, end: datetime) -> Optional[float]:
        first = self._first_sent()
        suppressed = exists(select(suppression_t.c.id).where(
            suppression_t.c.contact_id == first.c.cid, suppression_t.c.reason == "unsubscribed",
            suppression_t.c.created_at >= first.c.at, suppression_t.c.created_at < end))
        revoked = exists(select(consent_t.c.id).where(
            consent_t.c.contact_id == first.c.cid, consent_t.c.channel == "email", consent_t.c.status == "revoked",
            consent_t.c.purpose == "marketing", consent_t.c.recorded_at >= first.c.at, consent_t.c.recorded_at < end))
        recipients, left = self.conn.execute(
            select(func.count(), _count(or_(suppressed, revoked))).select_from(first)
            .where(first.c.at >= start, first.c.at < end)).one()
        return left / recipients if recipients else None

    def mqls(self, start: datetime, end: datetime) -> float:
        f = facts_subquery(self.now, with_leads=False)
        return self._scalar(select(func.count()).select_from(f).where(
            f.c.mql_at >= start, f.c.mql_at < end, self._member_before(f.c.contact_id, f.c.mql_at)))

    def demo_requests(self, start: datetime, end: datetime) -> float:
        return self._scalar(select(func.count()).where(
            event_t.c.name == DEMO_REQUEST, event_t.c.occurred_at >= start, event_t.c.occurred_at < end,
            self._member_before(event_t.c.contact_id, event_t.c.occurred_at)))


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _roi(revenue: Optional[float], cost: float) -> Optional[float]:
    return None if revenue is None or cost <= 0 else (revenue - cost) / cost


# ---------------------------------------------------------------- project metrics


class ProjectMeasure:
    """The business KPIs of nurture.reporting.sources over a window (policies.yaml objectives)."""

    def __init__(self, conn: Any, project: ProjectSpec, now: datetime):
        self.conn, self.project, self.now = conn, project, now

    def __call__(self, metric: str, start: datetime, end: datetime) -> Optional[float]:
        if metric not in OBJECTIVE_METRICS["project"]:  # validation refuses it; never a crash here
            return None
        window = Window(start, end)
        if metric in ("leads", "mqls", "sqls", "customers", "revenue", "spend", "cost_per_lead", "cac", "roi"):
            policies = self.project.policies
            rows, other = source_rows(self.conn, window, self.now, policies.currency, policies.timezone)
            value = getattr(source_total(rows, other), metric)
            return None if value is None else float(value)
        if metric == "mql_to_sql_rate":
            return mql_to_sql_rate(self.conn, window, self.now)
        if metric == "lead_velocity_rate":
            return lead_velocity_rate(self.conn, end, self.now)
        if metric == "clv":
            return clv(self.conn, end)
        if metric == "demo_requests":
            return float(count_events(self.conn, DEMO_REQUEST, window, self.now))
        if metric == "conversions":  # each purchase once, over every journey (as `daily`)
            pairs = (select(enrollment_t.c.contact_id, enrollment_t.c.converted_at).distinct()
                     .where(enrollment_t.c.converted_at >= start, enrollment_t.c.converted_at < end).subquery())
            return float(self.conn.execute(select(func.count()).select_from(pairs)).scalar() or 0)
        medians = {"time_to_first_value_days": time_to_first_value_days, "speed_to_lead_minutes": speed_to_lead_minutes,
                   "speed_to_sales_minutes": speed_to_sales_minutes}
        return medians[metric](self.conn, window, self.now).median

    def earliest_lead(self) -> Optional[datetime]:
        leads = leads_subquery(self.now)
        return aware(self.conn.execute(select(func.min(leads.c.lead_at))).scalar())


# ---------------------------------------------------------------- per journey, per project


def journey_objectives(conn: Any, project: ProjectSpec, report: JourneyFigures,
                       now: datetime) -> list[ObjectiveReport]:
    spec = project.journeys.get(report.name)
    if spec is None or not spec.objectives:
        return []
    tz = ZoneInfo(project.policies.timezone)
    measure = JourneyMeasure(conn, project, report, now)
    return [evaluate(o, measure, now, tz, report.started_at) for o in spec.objectives]


def project_objectives(conn: Any, project: ProjectSpec, now: datetime) -> list[ObjectiveReport]:
    if not project.policies.objectives:
        return []
    tz = ZoneInfo(project.policies.timezone)
    measure = ProjectMeasure(conn, project, now)
    default = measure.earliest_lead() if any(o.start is None and o.baseline is None
                                             for o in project.policies.objectives) else None
    return [evaluate(o, measure, now, tz, default) for o in project.policies.objectives]
