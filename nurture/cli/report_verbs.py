"""`nurture report [--html PATH]`, `nurture score` and `nurture import products FILE`: what
the journeys earned, lead scoring on demand, and the product catalog."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, store, utc_now


def _report_json(report) -> dict:
    from nurture.reporting.contract import report_json
    return report_json(report)


def print_report(result) -> None:
    """The terminal view: one line per journey, per step and per split arm (reasons in
    detail: --json, --html). The same figures and labels as the HTML page."""
    from rich.console import Console
    from rich.table import Table
    from nurture.reporting import views
    from nurture.reporting.format import count, money, pct, signed_points
    out = Console(highlight=False, soft_wrap=True, width=max(console.width, 160))  # tables need the room

    period = views.period_text(result.period_start, result.generated_at)
    table = Table(title=f"Journeys, {period} (ROI: incremental against the holdout where there is one)",
                  title_justify="left")
    for col in ("journey", "entered", "conv.", "rate", "lift (pts, 95% CI)", "incremental revenue (95% CI)",
                "attributed", "cost", "ROI"):
        # the figures with an interval (lift, incremental revenue, ROI) may wrap onto a second line
        table.add_column(col, justify="left" if col == "journey" else "right",
                         no_wrap=col not in ("journey", "lift (pts, 95% CI)", "incremental revenue (95% CI)", "ROI"))

    def pts(value):  # the column's heading says "pts"; the number follows the locale
        return signed_points(value).removesuffix(" pts")
    for r in result.journeys:
        conversions, rate, _, _ = views.conversion_cells(r)
        l = r.lift
        lift_text = (f"{pts(l.difference)} [{pts(l.low)}, {pts(l.high)}]" if l is not None and l.low is not None
                     else "no holdout")
        inc_text = views.incremental_cell(r).replace("95% CI ", "")
        table.add_row(r.name, count(r.entered), conversions, rate, lift_text, inc_text,
                      money(r.attributed_revenue), money(r.cost), views.roi_cell(r))
    t = result.totals()
    table.add_row("total", count(t["entered"]), count(sum(r.credited for r in result.journeys)), "", "",
                  money(t["incremental_revenue"]), money(t["attributed_revenue"]), money(t["costs"]["total"]),
                  views.total_roi_cell(t), style="bold")
    out.print(table)
    out.print(f"  conv. = conversions after the start: {views.START_NOTE}; {views.ATTRIBUTED_NOTE}", markup=False)
    for r in result.journeys:
        if r.recommendation and r.goal:
            out.print(f"  {r.name}: {r.recommendation}", markup=False)
    steps = Table(title="Steps", title_justify="left")
    clicks = any(s.clicks is not None for r in result.journeys for s in r.steps)
    opens = any(s.opens is not None for r in result.journeys for s in r.steps)
    cols = ["journey", "step", "sent", "deferred", "suppressed", "skipped"]
    cols += ["clicks"] if clicks else []
    cols += ["opens*"] if opens else []
    offers = any(s.offer_cost for r in result.journeys for s in r.steps)
    cols += ["conv.", "revenue", "cost"]
    cols += ["offer cost"] if offers else []
    for col in cols:
        steps.add_column(col, justify="left" if col in ("journey", "step") else "right", no_wrap=True)
    for r in result.journeys:
        for s in r.steps:
            row = [r.name, s.step + (f" [{s.arm}]" if s.arm else ""), count(s.sent), count(sum(s.deferred.values())),
                   count(sum(s.suppressed.values())), count(sum(s.skipped.values()))]
            if clicks:
                row.append("" if s.clicks is None else f"{count(s.clicks)} ({pct(s.click_rate or 0)})")
            if opens:
                row.append("" if s.opens is None else f"{count(s.opens)} ({pct(s.open_rate or 0)})")
            # "cost" is the step's message cost, as on the page and in the Prefect artifact; its
            # coupons are their own column
            row += [count(s.conversions), money(s.revenue if r.has_value else None), money(s.cost)]
            if offers:
                row.append(money(s.offer_cost))
            steps.add_row(*row)
    out.print(steps)
    if opens:
        out.print(f"  * {views.OPENS_NOTE}", markup=False)
    for r in result.journeys:
        for split in r.splits:
            if not any(a.recipients for a in split.arms):
                continue
            headers, rows = views.split_table(split)
            decision = views.decision_text(split)
            arms = Table(title=f"A/B split {r.name}/{split.step} (95% CI, Newcombe)", title_justify="left")
            for col in headers:
                arms.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
            for row in rows:
                arms.add_row(*row)
            out.print(arms)
            if decision:
                out.print("  " + decision.replace("**", ""), markup=False)
    def simple_table(title: str, headers: list[str], rows: list[list[str]], total=None) -> None:
        t = Table(title=title, title_justify="left")
        for i, col in enumerate(headers):
            t.add_column(col, justify="left" if i == 0 or col in ("medium", "owner") else "right", no_wrap=True)
        for row in rows:
            t.add_row(*row)
        if total is not None:
            t.add_row(*total, style="bold")
        out.print(t)
    for r in result.journeys:
        if r.objectives:
            simple_table(f"Objectives of {r.name}", *views.objective_table(r.objectives))
    if result.objectives:
        simple_table("Objectives of the project (policies.yaml)", *views.objective_table(result.objectives))
    headers, rows, total = views.sources_table(result)
    if rows:
        simple_table(f"Lead sources, {period}", headers, rows, total)
        out.print(f"  {views.SOURCES_NOTE}", markup=False)
    if result.kpis is not None:
        out.print("  " + " · ".join(f"{label}: {value}" for label, value in views.kpi_items(result)), markup=False)
    off = views.off_standard_text(result)
    if off:
        out.print("  " + off.replace("`", "'"), markup=False)
    if result.attribution:
        attribution = Table(title="Attribution of revenue", title_justify="left")
        for col in ("journey", "step", "last touch", "first touch", "40/20/40"):
            attribution.add_column(col, justify="left" if col in ("journey", "step") else "right", no_wrap=True)
        for a in result.attribution:
            attribution.add_row(a.journey, a.step, *(views.attribution_money(result, a, m)
                                                     for m in ("last_touch", "first_touch", "position_based")))
        out.print(attribution)
    h = result.handovers
    console.print(f"Sales handovers: {h.total} MQL(s) handed over, {h.contacted_within_sla} contacted within the SLA, "
                  f"{h.contacted_late} late, {h.overdue} overdue, {h.open_within_sla} open")


def report(html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report here"),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
           journey: Optional[str] = typer.Option(None, "--journey", help="Only this journey"),
           now: Optional[str] = typer.Option(None, "--now", help="Report as of this time (ISO 8601)")) -> None:
    """Per journey and step: funnel, conversions, incremental revenue and ROI against the
    holdout (attributed revenue beside it), real costs, clicks, A/B arms, attribution and
    sales handovers."""
    from nurture.reporting import build_report
    from nurture.reporting.format import number_style
    spec = open_project(only=journey)
    db = store()
    result = build_report(db, spec, parse_now(now) or utc_now(), journeys=[journey] if journey else None)
    if html is not None:
        from nurture.graph import journey_graphs
        from nurture.reporting.html_page import render_html
        graphs = journey_graphs(db, spec, [r.name for r in result.journeys])
        try:
            html.parent.mkdir(parents=True, exist_ok=True)
            with number_style(spec.policies):
                page = render_html(result, graphs=graphs)
            html.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {html}: {exc.strerror}") from None
    if as_json:
        print(json.dumps(_report_json(result), indent=2, default=str))
        return
    with number_style(spec.policies):
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
