"""`nurture report [--html PATH]`, `nurture score` and `nurture import products FILE`: what
the journeys earned, lead scoring on demand, and the product catalog."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, store, utc_now


def _report_json(report) -> dict:
    def lift(r):
        l = r.lift
        return None if l is None else {"difference": l.difference, "low": l.low, "high": l.high,
                                       "treated_rate": l.treated_rate, "holdout_rate": l.control_rate}
    return {
        "generated_at": report.generated_at.isoformat(),
        "journeys": [{"journey": r.name, "entered": r.entered, "treated": r.treated, "holdout": r.holdout,
                      "converted": r.converted, "converted_holdout": r.converted_holdout,
                      "conversion_rate": r.conversion_rate, "revenue": r.revenue, "cost": r.cost, "roi": r.roi,
                      "recipients": r.recipients, "revenue_per_recipient": r.revenue_per_recipient,
                      "unsubscribe_rate": r.unsubscribe_rate, "bounce_rate": r.bounce_rate, "lift": lift(r),
                      "sent": r.sent,
                      "steps": [s.__dict__ for s in r.steps]} for r in report.journeys],
        "attribution": [{"journey": a.journey, "step": a.step, "conversions": a.conversions, "revenue": a.revenue}
                        for a in report.attribution],
        "unattributed": {"conversions": report.unattributed[0], "revenue": report.unattributed[1]},
        "daily": [{"day": d.isoformat(), "conversions": n, "revenue": rev} for d, n, rev in report.daily],
        "handovers": report.handovers.__dict__,
    }


def print_report(result) -> None:
    """The terminal view: one line per journey and per step (reasons in detail: --json, --html)."""
    from rich.console import Console
    from rich.table import Table
    from nurture.reporting.format import money, pct
    out = Console(highlight=False, soft_wrap=True, width=max(console.width, 120))  # tables need the room

    def pts(value):
        return f"{value * 100:+.1f}"
    table = Table(title="Journeys (lift: messaged − holdout conversion rate, points, 95% CI)", title_justify="left")
    for col in ("journey", "entered", "conv.", "rate", "lift", "revenue", "cost", "ROI"):
        table.add_column(col, justify="left" if col == "journey" else "right")
    for r in result.journeys:
        l = r.lift
        lift_text = (f"{pts(l.difference)} [{pts(l.low)},{pts(l.high)}]" if l is not None and l.low is not None
                     else "no holdout")
        table.add_row(r.name, str(r.entered), str(r.converted), pct(r.conversion_rate), lift_text,
                      money(r.revenue), money(r.cost), "n/a" if r.roi is None else f"{r.roi:,.0f}×")
    out.print(table)
    steps = Table(title="Steps", title_justify="left")
    for col in ("journey", "step", "sent", "deferred", "suppressed", "skipped", "conv.", "revenue"):
        steps.add_column(col, justify="left" if col in ("journey", "step") else "right")
    for r in result.journeys:
        for s in r.steps:
            steps.add_row(r.name, s.step, str(s.sent), str(sum(s.deferred.values())), str(sum(s.suppressed.values())),
                          str(sum(s.skipped.values())), str(s.conversions), money(s.revenue))
    out.print(steps)
    attribution = Table(title="Attribution of revenue", title_justify="left")
    for col in ("journey", "step", "last touch", "first touch", "40/20/40"):
        attribution.add_column(col, justify="left" if col in ("journey", "step") else "right")
    for a in result.attribution:
        attribution.add_row(a.journey, a.step, money(a.revenue["last_touch"]), money(a.revenue["first_touch"]),
                            money(a.revenue["position_based"]))
    out.print(attribution)
    h = result.handovers
    console.print(f"Sales handovers: {h.total} MQL(s) handed over, {h.contacted_within_sla} contacted within the SLA, "
                  f"{h.contacted_late} late, {h.overdue} overdue, {h.open_within_sla} open")


def report(html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report here"),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
           journey: Optional[str] = typer.Option(None, "--journey", help="Only this journey"),
           now: Optional[str] = typer.Option(None, "--now", help="Report as of this time (ISO 8601)")) -> None:
    """Per journey and step: funnel, conversions, revenue, lift against the holdout, cost, ROI,
    attribution and sales handovers."""
    from nurture.reporting import build_report
    spec = open_project(only=journey)
    result = build_report(store(), spec, parse_now(now) or utc_now(), journeys=[journey] if journey else None)
    if html is not None:
        from nurture.reporting.html_page import render_html
        try:
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(render_html(result), encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {html}: {exc.strerror}") from None
    if as_json:
        print(json.dumps(_report_json(result), indent=2, default=str))
        return
    print_report(result)
    if html is not None:
        console.print(f"HTML report: {html}")


def score(now: Optional[str] = typer.Option(None, "--now", help="Logical clock (ISO 8601)")) -> None:
    """Recompute lead scores and lifecycle stages from journeys/scoring.yaml."""
    spec = open_project()
    scoring = spec.extra.get("scoring")
    if scoring is None:
        raise CliError("no journeys/scoring.yaml in this project")
    from nurture.scoring.compute import score_contacts
    result = score_contacts(store(), scoring, parse_now(now) or utc_now(), spec.segments)
    moved = ", ".join(f"{n} → {stage}" for stage, n in result.promoted.items())
    console.print(f"scored {result.contacts} contact(s); lifecycle: {moved}")


def import_products_cmd(file: Path = typer.Argument(..., help="CSV or JSONL product catalog")) -> None:
    """Import the product catalog (upsert by sku): sku, name, category, price, url, image_url,
    consumption_days, active, rank; other columns become attributes."""
    from nurture.catalog import import_products
    if not file.is_file():
        raise CliError(f"no such file: {file}")
    result = import_products(store(), file)
    console.print(f"imported {file.name}: {result.created} created, {result.updated} updated, "
                  f"{len(result.errors)} row error(s)")
    for error in result.errors:
        err_console.print(str(error), markup=False)
    if result.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(score)
    try:
        from nurture.cli.data_verbs import import_app
    except ImportError:  # pragma: no cover - data verbs always ship
        return
    import_app.command("products")(import_products_cmd)
