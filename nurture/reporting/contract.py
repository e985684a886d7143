"""`nurture report --json`: the report as a machine-readable contract (docs/report.md).
Fields are only ever added; a figure that does not exist is null (never 0.00 or -1).

Money is written in cents (`_cents`): every amount, and every amount per member, recipient,
lead or customer — as the report shows it. A sum of doubles depends on the order the database
adds its rows in (221.82 on one, 221.82000000000002 on the other), so more digits than cents
would say nothing but which database ran it. Ratios, rates, lifts and `unit_costs` (prices as
configured, e.g. 0.0009 per e-mail) keep their precision."""
from __future__ import annotations

from typing import Any, Optional

from nurture.reporting.objectives import ObjectiveReport
from nurture.reporting.report import JourneyReport, Report, StepReport
from nurture.reporting.sources import Kpis, SourceRow, SourceTotal
from nurture.reporting.splits import SplitReport


def _cents(value: Optional[float]) -> Optional[float]:
    """A money figure rounded to cents (never -0.0), or None."""
    return None if value is None else round(value, 2) + 0.0


def _money_estimate(e: Any) -> Optional[dict]:
    """_estimate of a money figure: value and interval in cents."""
    d = _estimate(e)
    return None if d is None else {k: _cents(v) for k, v in d.items()}


def _iso(value: Any) -> Optional[str]:
    return None if value is None else value.isoformat()


def _estimate(e: Any) -> Optional[dict]:
    """{value, low, high}, or null when the figure does not exist (no value, no holdout, no cost)."""
    return None if e is None or e.value is None else e.as_dict()


def step_json(s: StepReport, has_value: bool) -> dict:
    return {"step": s.step, "channel": s.channel, "arm": s.arm, "reached": s.reached, "sent": s.sent,
            "failed": s.failed, "holdout": s.holdout, "suppressed": s.suppressed, "skipped": s.skipped,
            "deferred": s.deferred, "conversions": s.conversions, "revenue": _cents(s.revenue) if has_value else None,
            "cost": _cents(s.cost), "segments": s.segments if "sms" in s.channel.split("/") else None,
            "offer_cost": _cents(s.offer_cost),
            "clicks": s.clicks, "click_rate": s.click_rate, "opens": s.opens, "open_rate": s.open_rate}


def decision_json(split: SplitReport) -> Optional[dict]:
    d = split.decision
    if d is None:
        return None
    return {"winner": d.winner, "decided_by": d.decided_by, "metric": d.metric, "confidence": d.confidence,
            "decided_at": _iso(d.decided_at), "version": d.version, "after_decision": d.after_decision}


def split_json(split: SplitReport) -> dict:
    return {"step": split.step, "decision": decision_json(split),
            "arms": [{"name": a.name, "recipients": a.recipients, "conversions": a.conversions, "rate": a.rate,
                      "revenue_per_recipient": _cents(a.revenue_per_recipient) if split.has_value else None,
                      "difference": _estimate(a.difference)}
                     for a in split.arms]}


def objective_json(o: ObjectiveReport) -> dict:
    period = o.baseline_period
    figure = _cents if o.unit == "money" else (lambda value: value)
    return {"metric": o.metric, "name": o.name, "owner": o.owner, "unit": o.unit,
            "lower_is_better": o.lower_is_better, "target": o.target, "relative": o.relative,
            "deadline": o.deadline.isoformat(), "start": _iso(o.start), "deadline_passed": o.deadline_passed,
            "baseline": figure(o.baseline),
            "baseline_period": None if period is None else {"from": period[0].isoformat(), "to": period[1].isoformat()},
            "current": figure(o.current), "progress": o.progress, "forecast": figure(o.forecast),
            "on_track": o.on_track}


def source_json(r: SourceRow) -> dict:
    return {"source": r.source, "medium": r.medium, "leads": r.leads, "mqls": r.mqls, "sqls": r.sqls,
            "opportunities": r.opportunities, "pipeline": _cents(r.pipeline),
            "customers": r.customers, "revenue": _cents(r.revenue), "spend": _cents(r.spend),
            "cost_per_lead": _cents(r.cost_per_lead), "cac": _cents(r.cac), "roi": r.roi}


def sources_total_json(t: Optional[SourceTotal]) -> Optional[dict]:
    if t is None:
        return None
    return {**source_json(t), "journey_cost": _cents(t.journey_cost), "blended_cac": _cents(t.blended_cac),
            "spend_other_currencies": {c: _cents(v) for c, v in t.spend_other_currencies.items()},
            "pipeline_other_currencies": {c: _cents(v) for c, v in t.pipeline_other_currencies.items()}}


def kpis_json(k: Optional[Kpis]) -> Optional[dict]:
    if k is None:
        return None
    return {"clv": _cents(k.clv), "mql_to_sql_rate": k.mql_to_sql_rate, "lead_velocity_rate": k.lead_velocity_rate,
            "time_to_first_value_days": k.time_to_first_value_days,
            "speed_to_lead_minutes": k.speed_to_lead_minutes.as_dict(),
            "speed_to_sales_minutes": k.speed_to_sales_minutes.as_dict()}


def journey_json(r: JourneyReport, report: Report) -> dict:
    lift = r.lift
    value = r.has_value
    return {
        "journey": r.name, "goal": r.goal or None, "goal_has_value": value,
        "period": {"start": _iso(r.started_at), "end": _iso(report.generated_at)},
        "entered": r.entered, "treated": r.treated, "holdout": r.holdout,
        "converted": r.converted, "converted_holdout": r.converted_holdout,
        "conversion_rate": r.conversion_rate,
        "credited": r.credited, "credited_holdout": r.credited_holdout,
        "attributed_conversions": r.attributed_conversions,
        "revenue": _cents(r.attributed_revenue), "attributed_revenue": _cents(r.attributed_revenue),
        "holdout_revenue": _cents(r.revenue_holdout) if value else None,
        "revenue_per_member": ({"treated": _cents(r.treated_sample.mean),
                                "holdout": _cents(r.holdout_sample.mean) if r.holdout else None}
                               if value else None),
        "incremental_revenue": _money_estimate(r.incremental_revenue),
        "cost": _cents(r.cost), "costs": {k: _cents(v) for k, v in r.costs.items()},
        "roi": r.roi, "attributed_roi": r.roi, "incremental_roi": _estimate(r.incremental_roi),
        "roi_basis": r.roi_basis, "recommendation": r.recommendation,
        "recipients": r.recipients, "revenue_per_recipient": _cents(r.revenue_per_recipient),
        "speed_to_lead_minutes": r.speed_to_lead_minutes.as_dict(),
        "unsubscribe_rate": r.unsubscribe_rate, "bounce_rate": r.bounce_rate,
        "lift": None if lift is None else {"difference": lift.difference, "low": lift.low, "high": lift.high,
                                           "treated_rate": lift.treated_rate, "holdout_rate": lift.control_rate},
        "sent": r.sent, "sms_segments": r.sms_segments, "sms_segments_estimated": r.sms_estimated,
        "offers_redeemed": r.offers_redeemed,
        "steps": [step_json(s, value) for s in r.steps],
        "splits": [split_json(s) for s in r.splits],
        "objectives": [objective_json(o) for o in r.objectives],
    }


def _totals_json(totals: dict) -> dict:
    money = ("attributed_revenue", "incremental_revenue", "roi_cost", "incremental_roi_cost")
    return {**totals, **{k: _cents(totals[k]) for k in money},
            "costs": {k: _cents(v) for k, v in totals["costs"].items()}}


def report_json(report: Report) -> dict:
    return {
        "generated_at": report.generated_at.isoformat(),
        "period": {"start": _iso(report.period_start), "end": _iso(report.generated_at)},
        "unit_costs": report.unit_costs,
        "clicks_tracked": report.clicks_tracked, "opens_tracked": report.opens_tracked,
        "journeys": [journey_json(r, report) for r in report.journeys],
        "totals": _totals_json(report.totals()),
        "offers_unattributed": _cents(report.offers_unplaced),
        "attribution": [{"journey": a.journey, "step": a.step, "conversions": a.conversions,
                         "revenue": {model: _cents(v) for model, v in a.revenue.items()}} for a in report.attribution],
        "unattributed": {"conversions": report.unattributed[0], "revenue": _cents(report.unattributed[1])},
        "daily": [{"day": d.isoformat(), "conversions": n, "revenue": _cents(rev)} for d, n, rev in report.daily],
        "handovers": report.handovers.__dict__,
        "sources": [source_json(r) for r in report.sources],
        "sources_total": sources_total_json(report.sources_total),
        "kpis": kpis_json(report.kpis),
        "objectives": [objective_json(o) for o in report.objectives],
        "utm_off_standard": [{"parameter": o.parameter, "value": o.value, "contacts": o.contacts}
                             for o in report.utm_off_standard],
    }
