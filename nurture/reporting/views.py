"""The words and tables every view of the report shares — the HTML page, the terminal and the
Prefect markdown artifact show the same figures, labelled the same way. Plain strings and
lists of cells; each view adds only its own markup. Columns that would be empty everywhere
(no deferrals, no SMS, clicks not tracked …) are left out."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Optional, Sequence

from nurture.reporting.format import NA, count, interval, money, multiple, pct, signed_points
from nurture.reporting.report import JourneyReport
from nurture.reporting.splits import SplitReport

OPENS_NOTE = ("opens are unreliable: image proxies (Apple Mail Privacy Protection, Gmail) fetch or block "
              "the tracking pixel — compare clicks and conversions instead")
START_NOTE = ("a member's start is its first send step of the journey — when it was messaged, or would have "
              "been (holdout); a conversion before it counts for nothing")
ATTRIBUTED_NOTE = ("attributed = every converter's revenue after a message of the journey: not what the journey "
                   "caused; the total sums the journeys, so a purchase several journeys converted on counts in each")


def period_text(start: Optional[datetime], end: Optional[datetime]) -> str:
    if end is None:
        return ""
    if start is None:
        return f"until {end:%Y-%m-%d %H:%M} UTC"
    return f"{start:%Y-%m-%d} → {end:%Y-%m-%d %H:%M} UTC"


def with_interval(value: Optional[float], low: Optional[float], high: Optional[float],
                  fmt: Callable[[Optional[float]], str] = money) -> str:
    if value is None:
        return NA
    ci = interval(low, high, fmt)
    return f"{fmt(value)} ({ci})" if ci else fmt(value)


def headline_text(r: JourneyReport) -> str:
    """What the journey earned, in one sentence: incremental where there is a holdout."""
    if not r.goal:
        return "No goal: nothing to measure revenue or ROI by (add `goal:` to the journey)"
    if not r.has_value:
        return f"Goal without a money value ({r.goal}): revenue and ROI n/a"
    if r.roi_basis == "incremental":
        inc, roi = r.incremental_revenue, r.incremental_roi
        return (f"Incremental revenue {with_interval(inc.value, inc.low, inc.high)} · "
                f"ROI (incremental) {with_interval(roi.value, roi.low, roi.high, multiple)}")
    return f"ROI (attributed) {multiple(r.roi)} — not proof: no holdout"


def roi_cell(r: JourneyReport) -> str:
    """The headline ROI in a table cell, its basis named, with its 95 % interval where it has one
    (the honest part: an interval that includes −1 … 0 says the holdout bought about as much)."""
    if not r.has_value:
        return NA
    if r.roi_basis == "incremental":
        roi = r.incremental_roi
        if roi.value is None:
            return NA
        ci = interval(roi.low, roi.high, multiple)
        return f"{multiple(roi.value)} (incremental)" + (f" ({ci})" if ci else "")
    return f"{multiple(r.roi)} (attributed, not proof: no holdout)"


def incremental_cell(r: JourneyReport) -> str:
    """The incremental revenue in a table cell, with its 95 % interval."""
    if not r.holdout:
        return "no holdout"
    inc = r.incremental_revenue
    return with_interval(inc.value, inc.low, inc.high)


def total_roi_cell(totals: Mapping[str, Any]) -> str:
    """The total row's incremental ROI, saying which cost it was computed over when that is not
    the row's total cost: journeys without a holdout have no incremental revenue, so it sets the
    journeys with one against their own cost."""
    value = totals["incremental_roi"]
    if value is None:
        return NA
    over = totals["incremental_roi_cost"]
    if abs(over - totals["costs"]["total"]) < 0.005:
        return f"{multiple(value)} (incremental)"
    return f"{multiple(value)} (incremental, journeys with a holdout: cost {money(over)})"


def lift_text(r: JourneyReport) -> str:
    lift = r.lift
    if lift is None or lift.low is None:
        return "no holdout"
    return f"{signed_points(lift.difference)} (95% CI {signed_points(lift.low)} … {signed_points(lift.high)})"


def conversion_cells(r: JourneyReport) -> list[str]:
    """conversions after the start, their rate, the holdout's rate, lift."""
    lift = r.lift
    return [count(r.credited), pct(lift.treated_rate if lift else None),
            pct(lift.control_rate) if r.holdout and lift else NA, lift_text(r)]


def money_table(r: JourneyReport) -> tuple[list[str], list[list[str]]]:
    """Revenue (incremental beside attributed), the costs, ROI; only the costs for a goal
    without a value."""
    inc = r.incremental_revenue
    headers, row = [], []
    if r.has_value:
        headers += ["incremental revenue", "attributed revenue"]
        row += [with_interval(inc.value, inc.low, inc.high) if r.holdout else "no holdout", money(r.attributed_revenue)]
    headers.append("cost: messages")
    row.append(money(r.cost_messages))
    if r.cost_offers:
        headers.append("offers")
        row.append(money(r.cost_offers))
    if r.cost_fixed:
        headers.append("fixed")
        row.append(money(r.cost_fixed))
    headers.append("total cost")
    row.append(money(r.cost))
    if r.has_value:
        roi = r.incremental_roi
        headers += ["ROI (incremental)", "ROI (attributed)", "revenue / recipient"]
        row += [with_interval(roi.value, roi.low, roi.high, multiple) if r.holdout else "no holdout",
                multiple(r.roi), money(r.revenue_per_recipient)]
    return headers, [row]


def attribution_money(report, a, model: str) -> str:
    """Credited revenue of an attribution row: n/a where the journey's goal has no value."""
    valued = {j.name: j.has_value for j in report.journeys}
    return money(a.revenue[model] if valued.get(a.journey, True) else None)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def step_table(r: JourneyReport) -> tuple[list[str], list[list[str]]]:
    steps = r.steps
    if not steps:
        return [], []
    columns: list[tuple[str, Callable]] = [("step", lambda s: s.step)]
    optional: list[tuple[str, Callable, Callable]] = [
        ("arm", lambda s: s.arm or "", lambda s: s.arm),
        ("channel", lambda s: s.channel, lambda s: True),
        ("reached", lambda s: count(s.reached), lambda s: True),
        ("sent", lambda s: count(s.sent), lambda s: True),
        ("deferred", lambda s: _reasons(s.deferred), lambda s: s.deferred),
        ("suppressed", lambda s: _reasons(s.suppressed), lambda s: s.suppressed),
        ("skipped", lambda s: _reasons(s.skipped), lambda s: s.skipped),
        ("failed", lambda s: count(s.failed), lambda s: s.failed),
        ("holdout", lambda s: count(s.holdout), lambda s: s.holdout),
        ("segments", lambda s: count(s.segments) if "sms" in s.channel.split("/") else "", lambda s: "sms" in s.channel.split("/")),
        ("clicks", lambda s: "" if s.clicks is None else f"{count(s.clicks)} ({pct(s.click_rate)})",
         lambda s: s.clicks is not None),
        ("opens (unreliable)", lambda s: "" if s.opens is None else f"{count(s.opens)} ({pct(s.open_rate)})",
         lambda s: s.opens is not None),
        ("converted after", lambda s: count(s.conversions), lambda s: True),
        ("revenue after", lambda s: money(s.revenue if r.has_value else None), lambda s: r.has_value),
        ("cost", lambda s: money(s.cost), lambda s: True),
        ("offer cost", lambda s: money(s.offer_cost), lambda s: s.offer_cost),
    ]
    columns += [(name, cell) for name, cell, shown in optional if any(shown(s) for s in steps)]
    return [name for name, _ in columns], [[cell(s) for _, cell in columns] for s in steps]


def decision_text(split: SplitReport) -> Optional[str]:
    """The split's decision in a sentence, or None while it is still an experiment."""
    d = split.decision
    if d is None:
        return None
    when = f" on {d.decided_at:%Y-%m-%d %H:%M} UTC" if d.decided_at is not None else ""
    how = (f"auto_winner chose **{d.winner}**{when} ({d.metric.replace('_', ' ')}, {pct(d.confidence)} confidence)"
           if d.decided_by == "auto_winner" else f"the journey file decided **{d.winner}**{when}")
    return (f"{how}: {count(d.after_decision)} later arrival(s) went to it and are not part of the comparison "
            "above")


def split_table(split: SplitReport) -> tuple[list[str], list[list[str]]]:
    headers = ["arm", "recipients", "conversions", "rate", "revenue / recipient", "difference to " + split.arms[0].name]
    rows = []
    for i, arm in enumerate(split.arms):
        d = arm.difference
        if i == 0:
            diff = "reference"
        elif d is None or d.value is None:
            diff = NA
        else:
            diff = f"{signed_points(d.value)}" + (f" (95% CI {signed_points(d.low)} … {signed_points(d.high)})"
                                                  if d.low is not None else "")
        rows.append([arm.name, count(arm.recipients), count(arm.conversions), pct(arm.rate),
                     money(arm.revenue_per_recipient if split.has_value else None), diff])
    return headers, rows


# ---------------------------------------------------------------- lead sources, KPIs, objectives

SOURCES_NOTE = ("by first touch (the UTM parameters / click id of the contact's first tagged visit); revenue = "
                "every purchase and won deal of those contacts in the period — attributed, not caused; open "
                "pipeline = their open CRM deals now; CAC = spend / customers")


def unit_value(value: Optional[float], unit: str) -> str:
    """An objective's or KPI's figure in its unit."""
    if value is None:
        return NA
    if unit == "money":
        return money(value)
    if unit == "rate":
        return pct(value)
    if unit == "ratio":
        return multiple(value)
    if unit == "days":
        return f"{count(round(value, 1))} d"
    if unit == "minutes":
        return f"{count(round(value))} min"
    return count(value)


def speed_to_lead_text(r: JourneyReport) -> str:
    """Per journey: from the triggering event to the first message, median and p90 (seconds
    under a minute: an instant trigger's figure would read "0 min")."""
    stl = r.speed_to_lead_minutes
    if not stl.n:
        return "Speed to lead: n/a (no event-triggered enrollment was sent a message)"

    def shown(minutes: Optional[float]) -> str:
        if minutes is not None and minutes < 1:
            return f"{count(round(minutes * 60))} s"
        return unit_value(minutes, "minutes")
    return f"Speed to lead: median {shown(stl.median)}, p90 {shown(stl.p90)} (over {count(stl.n)} leads)"


def sources_table(report: Any) -> tuple[list[str], list[list[str]], Optional[list[str]]]:
    """(headers, rows, totals row) of the lead sources; no rows without any lead in the period."""
    deals = any(r.opportunities or r.pipeline for r in report.sources)  # B2B columns only where there are deals
    headers = ["source", "medium", "leads", "MQLs", "SQLs", *(["opportunities"] if deals else []), "customers",
               "revenue", *(["open pipeline"] if deals else []), "spend", "cost / lead", "CAC", "ROI"]

    def cells(r: Any) -> list[str]:
        return [r.source, r.medium, count(r.leads), count(r.mqls), count(r.sqls),
                *([count(r.opportunities)] if deals else []), count(r.customers), money(r.revenue),
                *([money(r.pipeline)] if deals else []), money(r.spend), money(r.cost_per_lead), money(r.cac),
                multiple(r.roi)]
    rows = [cells(r) for r in report.sources]
    t = report.sources_total
    total = None if t is None else ["total", "", *cells(t)[2:]]
    return headers, rows, total


def kpi_items(report: Any) -> list[tuple[str, str]]:
    """The business KPIs as (label, figure), `n/a` where a figure does not exist."""
    k = report.kpis
    if k is None:
        return []
    t = report.sources_total
    items = [("CLV (revenue per customer, 365 d)", money(k.clv)), ("MQL → SQL", pct(k.mql_to_sql_rate)),
             ("lead velocity (MQLs, 30 d vs 30 d before)", pct(k.lead_velocity_rate)),
             ("time to first value (median)", unit_value(k.time_to_first_value_days, "days")),
             ("speed to lead (median / p90)", f"{unit_value(k.speed_to_lead_minutes.median, 'minutes')} / "
                                              f"{unit_value(k.speed_to_lead_minutes.p90, 'minutes')}"),
             ("speed to sales (median / p90)", f"{unit_value(k.speed_to_sales_minutes.median, 'minutes')} / "
                                               f"{unit_value(k.speed_to_sales_minutes.p90, 'minutes')}")]
    if t is not None:
        items.insert(1, ("blended CAC (spend + journey costs) / customers", money(t.blended_cac)))
    return items


def off_standard_text(report: Any) -> Optional[str]:
    """UTM values off policies.yaml's agreed list, or None."""
    found = report.utm_off_standard
    if not found:
        return None
    shown = ", ".join(f"{o.parameter} `{o.value}` ({count(o.contacts)})" for o in found[:12])
    more = f" and {count(len(found) - 12)} more" if len(found) > 12 else ""
    return f"UTM values off the agreed list (policies.yaml `utm:`), with their contacts: {shown}{more}"


def objective_table(objectives: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """One row per SMART objective: where it started, where it is, where it is heading."""
    headers = ["objective", "owner", "baseline", "current", "target", "deadline", "progress", "forecast", "status"]
    rows = []
    for o in objectives:
        status = (NA if o.on_track is None else ("met" if o.on_track else "missed") if o.deadline_passed
                  else "on track" if o.on_track else "off track")
        target = unit_value(o.target, o.unit) + (f" ({'+' if o.relative > 0 else ''}{pct(o.relative)})"
                                                 if o.relative is not None else "")
        rows.append([o.name or o.metric.replace("_", " "), o.owner or "", unit_value(o.baseline, o.unit),
                     unit_value(o.current, o.unit), target, o.deadline.isoformat(), pct(o.progress),
                     unit_value(o.forecast, o.unit), status])
    return headers, rows
