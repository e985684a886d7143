"""The per-run summary of one journey, for the Prefect UI: markdown and table rows (the
journey flow publishes them as artifacts after each run). The same figures, words and
formats as the HTML page and the terminal (nurture.reporting.views)."""
from __future__ import annotations

from datetime import datetime
from typing import Mapping, Optional

from nurture.reporting import views
from nurture.reporting.format import count, current_style, number_style
from nurture.reporting.report import JourneyReport, build_report
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "0"  # a dash renders as a bullet


def step_rows(r: JourneyReport) -> list[dict]:
    """One row per send step (the Prefect table artifact): counts as integers, money rounded."""
    return [{"step": s.step, "channel": s.channel, "arm": s.arm, "reached": s.reached, "sent": s.sent,
             "deferred": _reasons(s.deferred), "suppressed": _reasons(s.suppressed),
             "skipped": _reasons(s.skipped), "failed": s.failed, "holdout": s.holdout,
             "conversions": s.conversions, "revenue": round(s.revenue, 2) if r.has_value else None,
             "cost": round(s.cost, 4), "offer_cost": round(s.offer_cost, 2),
             "segments": s.segments if "sms" in s.channel.split("/") else None,
             "clicks": s.clicks, "click_rate": None if s.click_rate is None else round(s.click_rate, 4),
             "opens": s.opens, "open_rate": None if s.open_rate is None else round(s.open_rate, 4)}
            for s in r.steps]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")
    return (["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def journey_markdown(r: JourneyReport, period_end: Optional[datetime] = None) -> str:
    lines = [f"### {r.name}", "",
             f"Entered **{count(r.entered)}** ({count(r.treated)} messaged group, {count(r.holdout)} holdout) · "
             f"goal: {r.goal or 'none'}"
             + (f" · {views.period_text(r.started_at, period_end)}" if period_end is not None else ""), "",
             f"**{views.headline_text(r)}**", ""]
    if r.recommendation:
        lines += [f"_{r.recommendation}_", ""]
    lines += _table(["conversions after the start", "rate", "holdout rate", "lift"], [views.conversion_cells(r)])
    lines += ["", f"_{views.START_NOTE}; {views.ATTRIBUTED_NOTE}._", ""]
    if r.speed_to_lead_minutes.n:
        lines += [views.speed_to_lead_text(r), ""]
    lines += _table(*views.money_table(r)) + [""]
    headers, rows = views.step_table(r)
    if rows:
        lines += _table(headers, rows) + [""]
        if r.steps and any(s.opens is not None for s in r.steps):
            lines += [f"_{views.OPENS_NOTE}_", ""]
    if r.objectives:
        lines += ["Objectives:", ""] + _table(*views.objective_table(r.objectives)) + [""]
    for split in r.splits:
        lines += [f"A/B split **{split.step}** (difference of the conversion rate to arm "
                  f"{split.arms[0].name}, 95% CI, Newcombe):", ""]
        lines += _table(*views.split_table(split)) + [""]
        decision = views.decision_text(split)
        if decision:
            lines += [decision, ""]
    # a non-breaking space keeps an amount and its currency on one line in the Prefect UI
    symbol = current_style().symbol
    return "\n".join(lines).rstrip().replace(f" {symbol}", f"\u00a0{symbol}").replace(" pts", "\u00a0pts") + "\n"


def journey_summary(store: Store, project: ProjectSpec, journey: str, now: Optional[datetime] = None,
                    env: Optional[Mapping[str, str]] = None) -> tuple[str, list[dict]]:
    """(markdown, table rows) summarising one journey from its first run to now. `env`: the
    runtime's environment (public URL: the length of SMS links), default the process's."""
    report = build_report(store, project, now, journeys=[journey], env=env, attribution=False)
    r = report.journey(journey)
    with number_style(project.policies):
        return journey_markdown(r, report.generated_at), step_rows(r)

