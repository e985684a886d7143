"""Lead sources and business KPIs: leads, MQLs, SQLs, customers, revenue and ad spend per
first-touch source, and the KPIs over them (CLV, MQL→SQL rate, lead velocity, time to first
value, speed to lead and to sales) — over a window, grouped in SQL (one query per figure,
never one per contact). Definitions: docs/report.md, "Lead sources and business KPIs".

- a contact's **lead time**: the earlier of its creation and its earliest event; its
  **source**: the (source, medium) of its first touch (`contact_touch`), else "(none)".
- the time it **reached a stage** (mql, sql, customer): the earliest evidence of that stage
  or a later one — a `lifecycle_stage_changed` event (nurture.lifecycle), a hand-over with
  that stage or a later one, a purchase (every stage). A contact whose current stage says it
  got there but nothing dates it is counted in all-time figures only.
- **revenue**: the `value` of purchase and won-deal events — everything the source's contacts
  bought, by first touch: attributed, not caused.
- **pipeline**: the amounts of the open CRM deals of its contacts as they stand now, in the
  project's currency (other currencies: `SourceTotal.pipeline_other_currencies`).
- **spend**: `ad_spend` of the window's days, matched on (source, medium); spend imported
  without a medium matches the whole source (its rows are merged into one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Optional, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import Float, Numeric, and_, case, cast, func, or_, select

from nurture.conversions.event_fields import MAX_VALUE
from nurture.lifecycle import STAGE_CHANGED, STAGES, at_or_beyond
from nurture.store.times import aware
from nurture.store.json_values import NUMBER_PATTERN
from nurture.store.json_values import json_number as stored_number
from nurture.store.models import HOLDOUT, SENT
from nurture.store.tables import contact_t, deal_t, event_t, handover_t, message_t, spend_t, touch_t

REVENUE_EVENTS = ("purchase", "deal_won")  # what money a contact brings: shop orders and won CRM deals
SALES_CONTACTED = "sales_contacted"
DEMO_REQUEST = "demo_request"
QUALIFIED = STAGES[1:]  # the stages a lead reaches: mql, sql, opportunity, customer
NO_SOURCE = "(none)"
ANY_MEDIUM = "(all)"  # a source whose spend was imported without a medium: every medium merged
VELOCITY_PERIOD = timedelta(days=30)
CLV_WINDOW = timedelta(days=365)


@dataclass(frozen=True)
class Window:
    """[start, end): start None means from the beginning (then a stage reached at an
    unknown time counts too)."""
    start: Optional[datetime]
    end: datetime

    def has(self, column: Any, reached: Any = None) -> Any:
        """SQL: `column` (a time) falls in the window; `reached` (a 0/1 column) lets an
        undated stage count when the window is all time."""
        if self.start is None:
            inside = column < self.end
            return inside if reached is None else or_(inside, and_(column.is_(None), reached == 1))
        return and_(column >= self.start, column < self.end)

    def days(self, tz: str = "UTC") -> tuple[Optional[date], date]:
        """The first and last calendar day (in the project's time zone `tz`: ad platforms
        export the account's days) the window overlaps; a day it touches counts in full."""
        zone = ZoneInfo(tz)
        last = (self.end - timedelta(microseconds=1)).astimezone(zone).date()
        return (None if self.start is None else self.start.astimezone(zone).date()), last


@dataclass
class SourceRow:
    source: str
    medium: str
    leads: int = 0
    reached: dict[str, int] = field(default_factory=dict)  # stage → contacts that reached it in the window
    revenue: float = 0.0
    spend: Optional[float] = None  # None: no spend imported for this source
    pipeline: float = 0.0  # the amounts of the open CRM deals of its contacts, now

    @property
    def mqls(self) -> int:
        return self.reached.get("mql", 0)

    @property
    def sqls(self) -> int:
        return self.reached.get("sql", 0)

    @property
    def opportunities(self) -> int:
        return self.reached.get("opportunity", 0)

    @property
    def customers(self) -> int:
        return self.reached.get("customer", 0)

    @property
    def cost_per_lead(self) -> Optional[float]:
        return self.spend / self.leads if self.spend is not None and self.leads else None

    @property
    def cac(self) -> Optional[float]:
        return self.spend / self.customers if self.spend is not None and self.customers else None

    @property
    def roi(self) -> Optional[float]:
        return (self.revenue - self.spend) / self.spend if self.spend else None

    def add(self, other: "SourceRow") -> None:
        self.leads += other.leads
        for stage, n in other.reached.items():
            self.reached[stage] = self.reached.get(stage, 0) + n
        self.revenue += other.revenue
        self.pipeline += other.pipeline
        if other.spend is not None:
            self.spend = (self.spend or 0.0) + other.spend

    @property
    def empty(self) -> bool:
        return not (self.leads or any(self.reached.values()) or self.revenue or self.pipeline
                    or self.spend is not None)


@dataclass
class SourceTotal(SourceRow):
    """Every source together, and the spend and pipeline left out because they are in another currency."""
    journey_cost: Optional[float] = None  # messages + offers + fixed of the report's journeys
    spend_other_currencies: dict[str, float] = field(default_factory=dict)
    pipeline_other_currencies: dict[str, float] = field(default_factory=dict)

    @property
    def blended_cac(self) -> Optional[float]:
        """(ad spend + the journeys' costs) / new customers — only where spend was imported."""
        if self.spend is None or not self.customers:
            return None
        return (self.spend + (self.journey_cost or 0.0)) / self.customers


@dataclass(frozen=True)
class Percentiles:
    median: Optional[float] = None
    p90: Optional[float] = None
    n: int = 0  # how many contacts the figure is over

    def as_dict(self) -> dict:
        return {"median": self.median, "p90": self.p90, "n": self.n}


@dataclass
class Kpis:
    clv: Optional[float] = None
    mql_to_sql_rate: Optional[float] = None
    lead_velocity_rate: Optional[float] = None
    time_to_first_value_days: Optional[float] = None
    speed_to_lead_minutes: Percentiles = field(default_factory=Percentiles)
    speed_to_sales_minutes: Percentiles = field(default_factory=Percentiles)


# ---------------------------------------------------------------- pure


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-quantile by linear interpolation between the closest ranks (position q·(n−1) of
    the sorted values; Excel's PERCENTILE.INC, numpy's default): the median of 1, 2, 3, 10 is
    2.5, its p90 7.9. None without values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(percentile(values, 0.5), percentile(values, 0.9), len(values))


# ---------------------------------------------------------------- SQL building blocks


def json_number(conn: Any, props: Any, key: str) -> Any:
    """SQL: a JSON property as an amount, as the engine's conversions read it
    (`event_fields.value_of`): a number from 0 to 1e12, or text that reads as one; 0 for
    anything else — missing, a word, negative, NaN, 1e400 — so one absurd stored value can
    neither fail the report nor make a sum infinite."""
    if conn.dialect.name == "postgresql":
        text = props[key].as_string()
        # numeric first: '1e400' is a numeric, but no double precision (a cast would fail)
        number = case((text.op("~")(NUMBER_PATTERN), cast(text, Numeric)), else_=None)
        # the bounds as integers: a float bound would compare as double precision, and fail
        return case((number.between(0, int(MAX_VALUE)), cast(number, Float)), else_=0.0)
    # SQLite: store.json_values' reading — a JSON number, or text that is one whole number
    # (NUMBER_PATTERN: "45.00", not "45 EUR", "12abc", "1,5"); a boolean or anything else is NULL
    number = stored_number(props[key])
    return case((number.between(0, MAX_VALUE), number), else_=0.0)


def _label(column: Any) -> Any:
    """A UTM value as grouped and shown: trimmed, lower case, "(none)" when empty."""
    return func.coalesce(func.nullif(func.lower(func.trim(column)), ""), NO_SOURCE)


def _earliest(*columns: Any) -> Any:
    """SQL: the earliest of nullable times (NULL when all are)."""
    out = columns[0]
    for col in columns[1:]:
        out = case((out.is_(None), col), (col.is_(None), out), (col < out, col), else_=out)
    return out


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def leads_subquery(now: datetime) -> Any:
    """Per contact: lead_at (the earlier of created_at and its first event) and its
    first-touch source and medium."""
    first = (select(event_t.c.contact_id.label("cid"), func.min(event_t.c.occurred_at).label("at"))
             .where(event_t.c.occurred_at <= now).group_by(event_t.c.contact_id).subquery("first_event"))
    touch = touch_t.alias("first_touch")
    lead_at = case((and_(first.c.at.isnot(None), first.c.at < contact_t.c.created_at), first.c.at),
                   else_=contact_t.c.created_at)
    return (select(contact_t.c.id.label("contact_id"), lead_at.label("lead_at"),
                   _label(touch.c.source).label("source"), _label(touch.c.medium).label("medium"))
            .select_from(contact_t.outerjoin(first, first.c.cid == contact_t.c.id)
                         .outerjoin(touch, and_(touch.c.contact_id == contact_t.c.id, touch.c.touch == "first")))
            .subquery("leads"))


def facts_subquery(now: datetime, with_leads: bool = True) -> Any:
    """Per contact: `first_purchase_at`, and per stage S of QUALIFIED `<S>_at` (when it first
    reached S or beyond, NULL when nothing dates it) and `reached_<S>` (1 when it did, dated or
    not: its current stage, or any evidence); `with_leads` adds lead_at, source and medium
    (the costlier part: every contact's first event)."""
    to = event_t.c.properties["to"].as_string()
    changes = (select(event_t.c.contact_id.label("cid"),
                      *[func.min(case((to.in_(at_or_beyond(s)), event_t.c.occurred_at))).label(s) for s in QUALIFIED])
               .where(event_t.c.name == STAGE_CHANGED, event_t.c.occurred_at <= now)
               .group_by(event_t.c.contact_id).subquery("changes"))
    handed = (select(handover_t.c.contact_id.label("cid"),
                     *[func.min(case((handover_t.c.stage.in_(at_or_beyond(s)), handover_t.c.created_at))).label(s)
                       for s in QUALIFIED])
              .where(handover_t.c.created_at <= now, handover_t.c.status != HOLDOUT)  # (held out: not handed over)
              .group_by(handover_t.c.contact_id).subquery("handed"))
    bought = (select(event_t.c.contact_id.label("cid"), func.min(event_t.c.occurred_at).label("at"))
              .where(event_t.c.name.in_(REVENUE_EVENTS), event_t.c.occurred_at <= now)
              .group_by(event_t.c.contact_id).subquery("bought"))
    stage = func.coalesce(contact_t.c.lifecycle_stage, "lead")
    rank = case(*[(stage == s, i) for i, s in enumerate(STAGES)], else_=0)
    columns = [contact_t.c.id.label("contact_id"), bought.c.at.label("first_purchase_at")]
    base: Any = contact_t
    if with_leads:
        leads = leads_subquery(now)
        columns += [leads.c.lead_at, leads.c.source, leads.c.medium]
        base = contact_t.join(leads, leads.c.contact_id == contact_t.c.id)
    for s in QUALIFIED:
        at = _earliest(changes.c[s], handed.c[s], bought.c.at)
        columns.append(at.label(f"{s}_at"))
        columns.append(case((or_(rank >= STAGES.index(s), at.isnot(None)), 1), else_=0).label(f"reached_{s}"))
    return (select(*columns)
            .select_from(base.outerjoin(changes, changes.c.cid == contact_t.c.id)
                         .outerjoin(handed, handed.c.cid == contact_t.c.id)
                         .outerjoin(bought, bought.c.cid == contact_t.c.id))
            .subquery("facts"))


# ---------------------------------------------------------------- per source


@dataclass
class OtherCurrencies:
    """Money in other currencies than the project's, left out of every row (Nurture converts
    none): spend of the window, open pipeline now — each by currency."""
    spend: dict[str, float] = field(default_factory=dict)
    pipeline: dict[str, float] = field(default_factory=dict)


def _bounded(amount: Any) -> Any:
    """SQL: a stored amount that counts — from 0 to MAX_VALUE, the cap every import and the
    CRM pull apply; anything else (stored before the cap) counts 0, so no sum becomes infinite
    or fails (PostgreSQL's double precision sum raises on overflow)."""
    return case((amount.between(0, MAX_VALUE), amount), else_=0.0)


def source_rows(conn: Any, window: Window, now: datetime, currency: str, tz: str = "UTC"
                ) -> tuple[list[SourceRow], OtherCurrencies]:
    """The rows per (source, medium) over `window` — by leads, then name — and the spend and
    open pipeline in other currencies than the project's `currency` (left out of every row);
    spend days are days in the project's time zone `tz`."""
    f = facts_subquery(now)
    rows: dict[tuple[str, str], SourceRow] = {}

    def row(source: str, medium: str) -> SourceRow:
        return rows.setdefault((source, medium), SourceRow(source, medium))

    for source, medium, leads, *reached in conn.execute(
            select(f.c.source, f.c.medium, _count(window.has(f.c.lead_at)),
                   *[_count(window.has(f.c[f"{s}_at"], f.c[f"reached_{s}"])) for s in QUALIFIED])
            .group_by(f.c.source, f.c.medium)):
        r = row(source, medium)
        r.leads = int(leads)
        r.reached = {s: int(n) for s, n in zip(QUALIFIED, reached)}
    touch = touch_t.alias("first_touch")
    src, med = _label(touch.c.source), _label(touch.c.medium)
    for source, medium, revenue in conn.execute(
            select(src, med, func.sum(json_number(conn, event_t.c.properties, "value")))
            .select_from(event_t.outerjoin(touch, and_(touch.c.contact_id == event_t.c.contact_id,
                                                       touch.c.touch == "first")))
            .where(event_t.c.name.in_(REVENUE_EVENTS), event_t.c.occurred_at <= now, window.has(event_t.c.occurred_at))
            .group_by(src, med)):
        row(source, medium).revenue = float(revenue or 0.0)
    deal_money = func.coalesce(deal_t.c.currency, currency)  # a deal without one: the project's (crm.deals)
    pipeline_other: dict[str, float] = {}
    for source, medium, money, amount in conn.execute(  # the open pipeline is a state: as it stands now
            select(src, med, deal_money, func.sum(_bounded(deal_t.c.amount)))
            .select_from(deal_t.outerjoin(touch, and_(touch.c.contact_id == deal_t.c.contact_id,
                                                      touch.c.touch == "first")))
            .where(deal_t.c.outcome == "open", deal_t.c.contact_id.is_not(None), deal_t.c.amount.is_not(None))
            .group_by(src, med, deal_money)):
        if money != currency.upper():  # Nurture converts no currencies
            pipeline_other[money] = pipeline_other.get(money, 0.0) + float(amount or 0.0)
            continue
        row(source, medium).pipeline += float(amount or 0.0)
    other = OtherCurrencies(_spend(conn, window, currency, tz, row), pipeline_other)
    merged: dict[tuple[str, str], SourceRow] = {}
    whole = {s for (s, m), r in rows.items() if m == ANY_MEDIUM}
    for (source, medium), r in rows.items():
        if source in whole and medium != ANY_MEDIUM:
            merged.setdefault((source, ANY_MEDIUM), SourceRow(source, ANY_MEDIUM)).add(r)
        else:
            merged.setdefault((source, medium), SourceRow(source, medium)).add(r)
    out = [r for r in merged.values() if not r.empty]
    return sorted(out, key=lambda r: (-r.leads, r.source, r.medium)), other


def _spend(conn: Any, window: Window, currency: str, tz: str, row: Any) -> dict[str, float]:
    first_day, last_day = window.days(tz)
    src, med = _label(spend_t.c.source), func.lower(func.trim(spend_t.c.medium))
    cur = func.upper(func.trim(spend_t.c.currency))
    filters = [spend_t.c.day <= last_day] + ([spend_t.c.day >= first_day] if first_day is not None else [])
    other: dict[str, float] = {}
    for source, medium, money, amount in conn.execute(
            select(src, med, cur, func.sum(_bounded(spend_t.c.amount))).where(*filters).group_by(src, med, cur)):
        if money != currency.upper():
            other[money] = other.get(money, 0.0) + float(amount or 0.0)
            continue
        r = row(source, medium or ANY_MEDIUM)
        r.spend = (r.spend or 0.0) + float(amount or 0.0)
    return other


def source_total(rows: Sequence[SourceRow], other_currencies: OtherCurrencies,
                 journey_cost: Optional[float] = None) -> SourceTotal:
    total = SourceTotal("(all)", "(all)", journey_cost=journey_cost,
                        spend_other_currencies=dict(other_currencies.spend),
                        pipeline_other_currencies=dict(other_currencies.pipeline))
    for r in rows:
        total.add(r)
    return total


# ---------------------------------------------------------------- KPIs


def clv(conn: Any, at: datetime) -> Optional[float]:
    """Revenue per paying customer over the CLV_WINDOW (365 days) before `at`."""
    since = at - CLV_WINDOW
    revenue, customers = conn.execute(
        select(func.sum(json_number(conn, event_t.c.properties, "value")), func.count(func.distinct(event_t.c.contact_id)))
        .where(event_t.c.name.in_(REVENUE_EVENTS), event_t.c.occurred_at >= since, event_t.c.occurred_at < at)).one()
    return float(revenue or 0.0) / customers if customers else None


def mql_to_sql_rate(conn: Any, window: Window, now: datetime) -> Optional[float]:
    """Of the contacts that became MQL in the window, the share that reached SQL or beyond (by now)."""
    f = facts_subquery(now, with_leads=False)
    mqls, sqls = conn.execute(select(func.count(), _count(f.c.reached_sql == 1)).select_from(f)
                              .where(window.has(f.c.mql_at, f.c.reached_mql))).one()
    return int(sqls) / mqls if mqls else None


def lead_velocity_rate(conn: Any, at: datetime, now: Optional[datetime] = None) -> Optional[float]:
    """(MQLs in the 30 days before `at` − MQLs in the 30 days before those) / the latter;
    None when the earlier period has none."""
    f = facts_subquery(now or at, with_leads=False)
    recent, earlier = conn.execute(select(
        _count(and_(f.c.mql_at >= at - VELOCITY_PERIOD, f.c.mql_at < at)),
        _count(and_(f.c.mql_at >= at - 2 * VELOCITY_PERIOD, f.c.mql_at < at - VELOCITY_PERIOD))).select_from(f)).one()
    return (int(recent) - int(earlier)) / int(earlier) if earlier else None


def time_to_first_value_days(conn: Any, window: Window, now: datetime) -> Percentiles:
    """Days from lead time to first purchase, over the contacts whose first purchase falls in the window."""
    f = facts_subquery(now)
    rows = conn.execute(select(f.c.lead_at, f.c.first_purchase_at)
                        .where(f.c.first_purchase_at.isnot(None), window.has(f.c.first_purchase_at),
                               f.c.first_purchase_at >= f.c.lead_at)).all()
    return percentiles([(aware(b) - aware(a)).total_seconds() / 86400 for a, b in rows])


def speed_to_lead_minutes(conn: Any, window: Window, now: datetime) -> Percentiles:
    """Minutes from lead time to the contact's first sent message (any journey), over the
    window's leads that were sent one."""
    leads = leads_subquery(now)
    first = (select(message_t.c.contact_id.label("cid"), func.min(message_t.c.sent_at).label("at"))
             .where(message_t.c.status == SENT, message_t.c.sent_at <= now)
             .group_by(message_t.c.contact_id).subquery("first_sent"))
    rows = conn.execute(select(leads.c.lead_at, first.c.at)
                        .select_from(leads.join(first, first.c.cid == leads.c.contact_id))
                        .where(window.has(leads.c.lead_at), first.c.at >= leads.c.lead_at)).all()
    return percentiles([(aware(b) - aware(a)).total_seconds() / 60 for a, b in rows])


def speed_to_sales_minutes(conn: Any, window: Window, now: datetime) -> Percentiles:
    """Minutes from MQL time to the first `sales_contacted` event at or after it, over the
    contacts that became MQL in the window and were contacted."""
    f = facts_subquery(now, with_leads=False)
    contacted = (select(event_t.c.contact_id.label("cid"), event_t.c.occurred_at.label("at"))
                 .where(event_t.c.name == SALES_CONTACTED, event_t.c.occurred_at <= now).subquery("contacted"))
    rows = conn.execute(select(f.c.mql_at, func.min(contacted.c.at))
                        .select_from(f.join(contacted, and_(contacted.c.cid == f.c.contact_id,
                                                            contacted.c.at >= f.c.mql_at)))
                        .where(window.has(f.c.mql_at))
                        .group_by(f.c.contact_id, f.c.mql_at)).all()
    return percentiles([(aware(b) - aware(a)).total_seconds() / 60 for a, b in rows])


def business_kpis(conn: Any, window: Window, now: datetime) -> Kpis:
    return Kpis(clv=clv(conn, now), mql_to_sql_rate=mql_to_sql_rate(conn, window, now),
                lead_velocity_rate=lead_velocity_rate(conn, now),
                time_to_first_value_days=time_to_first_value_days(conn, window, now).median,
                speed_to_lead_minutes=speed_to_lead_minutes(conn, window, now),
                speed_to_sales_minutes=speed_to_sales_minutes(conn, window, now))


def count_events(conn: Any, name: str, window: Window, now: datetime) -> int:
    return int(conn.execute(select(func.count()).where(event_t.c.name == name, event_t.c.occurred_at <= now,
                                                       window.has(event_t.c.occurred_at))).scalar() or 0)



@dataclass
class OffStandard:
    parameter: str  # source | medium | campaign | content | term
    value: str
    contacts: int  # contacts whose first or last touch carries it


def off_standard_utms(conn: Any, policy: Any) -> list[OffStandard]:
    """The UTM values on lead sources (first and last touches) that policies.yaml `utm:` does not
    allow, compared case-insensitively, most frequent first — links someone tagged off the agreed
    list, which split one campaign's figures over several rows. Empty without a `utm:` policy."""
    if policy is None:
        return []
    out: list[OffStandard] = []
    for parameter in ("source", "medium", "campaign", "content", "term"):
        allowed = getattr(policy, parameter)
        if allowed is None:
            continue
        column = getattr(touch_t.c, parameter)
        known = {a.strip().lower() for a in allowed}
        for value, contacts in conn.execute(
                select(column, func.count(func.distinct(touch_t.c.contact_id)))
                .where(column.is_not(None), column != "").group_by(column)):
            if value.strip().lower() not in known:
                out.append(OffStandard(parameter, value, int(contacts)))
    return sorted(out, key=lambda o: (-o.contacts, o.parameter, o.value))
