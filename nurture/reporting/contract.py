"""`nurture report --json`: the report as a machine-readable contract (docs/report.md).
Fields are only ever added; a figure that does not exist is null (never 0.00 or -1)."""
from __future__ import annotations

from typing import Any, Optional

from nurture.reporting.report import JourneyReport, Report, StepReport
from nurture.reporting.splits import SplitReport


def _iso(value: Any) -> Optional[str]:
    return None if value is None else value.isoformat()


def _estimate(e: Any) -> Optional[dict]:
    """{value, low, high}, or null when the figure does not exist (no value, no holdout, no cost)."""
    return None if e is None or e.value is None else e.as_dict()


def step_json(s: StepReport, has_value: bool) -> dict:
    return {"step": s.step, "channel": s.channel, "arm": s.arm, "reached": s.reached, "sent": s.sent,
            "failed": s.failed, "holdout": s.holdout, "suppressed": s.suppressed, "skipped": s.skipped,
            "deferred": s.deferred, "conversions": s.conversions, "revenue": s.revenue if has_value else None,
            "cost": s.cost, "segments": s.segments if s.channel == "sms" else None, "offer_cost": s.offer_cost,
            "clicks": s.clicks, "click_rate": s.click_rate, "opens": s.opens, "open_rate": s.open_rate}


def split_json(split: SplitReport) -> dict:
    return {"step": split.step,
            "arms": [{"name": a.name, "recipients": a.recipients, "conversions": a.conversions, "rate": a.rate,
                      "revenue_per_recipient": a.revenue_per_recipient if split.has_value else None,
                      "difference": _estimate(a.difference)}
                     for a in split.arms]}


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
        "revenue": r.attributed_revenue, "attributed_revenue": r.attributed_revenue,
        "holdout_revenue": r.revenue_holdout if value else None,
        "revenue_per_member": ({"treated": r.treated_sample.mean, "holdout": r.holdout_sample.mean if r.holdout else None}
                               if value else None),
        "incremental_revenue": _estimate(r.incremental_revenue),
        "cost": r.cost, "costs": r.costs,
        "roi": r.roi, "attributed_roi": r.roi, "incremental_roi": _estimate(r.incremental_roi),
        "roi_basis": r.roi_basis, "recommendation": r.recommendation,
        "recipients": r.recipients, "revenue_per_recipient": r.revenue_per_recipient,
        "unsubscribe_rate": r.unsubscribe_rate, "bounce_rate": r.bounce_rate,
        "lift": None if lift is None else {"difference": lift.difference, "low": lift.low, "high": lift.high,
                                           "treated_rate": lift.treated_rate, "holdout_rate": lift.control_rate},
        "sent": r.sent, "sms_segments": r.sms_segments, "sms_segments_estimated": r.sms_estimated,
        "offers_redeemed": r.offers_redeemed,
        "steps": [step_json(s, value) for s in r.steps],
        "splits": [split_json(s) for s in r.splits],
    }


def report_json(report: Report) -> dict:
    return {
        "generated_at": report.generated_at.isoformat(),
        "period": {"start": _iso(report.period_start), "end": _iso(report.generated_at)},
        "unit_costs": report.unit_costs,
        "clicks_tracked": report.clicks_tracked, "opens_tracked": report.opens_tracked,
        "journeys": [journey_json(r, report) for r in report.journeys],
        "totals": report.totals(),
        "offers_unattributed": report.offers_unplaced,
        "attribution": [{"journey": a.journey, "step": a.step, "conversions": a.conversions, "revenue": a.revenue}
                        for a in report.attribution],
        "unattributed": {"conversions": report.unattributed[0], "revenue": report.unattributed[1]},
        "daily": [{"day": d.isoformat(), "conversions": n, "revenue": rev} for d, n, rev in report.daily],
        "handovers": report.handovers.__dict__,
    }
