"""The per-run summary of one journey, for the Prefect UI: markdown and table rows (the
journey flow publishes them as artifacts after each run)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from nurture.reporting.format import money, pct, signed_points
from nurture.reporting.report import JourneyReport, build_report
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "0"  # a dash renders as a bullet


def step_rows(r: JourneyReport) -> list[dict]:
    return [{"step": s.step, "channel": s.channel, "reached": s.reached, "sent": s.sent,
             "deferred": _reasons(s.deferred), "suppressed": _reasons(s.suppressed),
             "skipped": _reasons(s.skipped), "failed": s.failed, "holdout": s.holdout,
             "conversions": s.conversions, "revenue": round(s.revenue, 2), "cost": round(s.cost, 4)}
            for s in r.steps]


def journey_markdown(r: JourneyReport) -> str:
    lift_text = "no holdout"
    if r.lift is not None and r.lift.low is not None:
        lift_text = (f"{signed_points(r.lift.difference)} (95% CI {signed_points(r.lift.low)} to "
                     f"{signed_points(r.lift.high)}, Newcombe)")
    roi = "n/a" if r.roi is None else f"{r.roi:,.1f}×"
    lines = [f"### {r.name}", "",
             f"Entered **{r.entered}** ({r.treated} messaged group, {r.holdout} holdout) · goal: {r.goal or 'none'}", "",
             "| conversions | rate | holdout rate | lift | revenue | cost | ROI | revenue / recipient | unsubscribes | bounces |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {r.converted} | {pct(r.conversion_rate)} | {pct(r.holdout_rate)} | {lift_text} | {money(r.revenue)} | "
             f"{money(r.cost)} | {roi} | {money(r.revenue_per_recipient)} | {pct(r.unsubscribe_rate)} | "
             f"{pct(r.bounce_rate)} |", "",
             "| step | channel | reached | sent | deferred | suppressed | skipped | failed | conversions | revenue |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in step_rows(r):
        lines.append(f"| {row['step']} | {row['channel']} | {row['reached']} | {row['sent']} | {row['deferred']} | "
                     f"{row['suppressed']} | {row['skipped']} | {row['failed']} | {row['conversions']} | "
                     f"{money(row['revenue'])} |")
    return "\n".join(lines) + "\n"


def journey_summary(store: Store, project: ProjectSpec, journey: str,
                    now: Optional[datetime] = None) -> tuple[str, list[dict]]:
    """(markdown, table rows) summarising one journey from its first run to now."""
    report = build_report(store, project, now, journeys=[journey])
    return journey_markdown(report.journey(journey)), step_rows(report.journey(journey))
