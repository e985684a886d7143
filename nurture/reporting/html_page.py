"""The report as one self-contained HTML file: inline CSS and inline SVG charts (a funnel per
journey, daily conversions, and — given the journeys' diagrams — each journey's map with its
counts, nurture.graph), no scripts, no CDN — it opens offline and can be mailed.
Figures and labels come from nurture.reporting.views (the same as the terminal and the
Prefect artifact); empty sections are left out."""
from __future__ import annotations

import re
from html import escape
from typing import Mapping, Optional

from nurture.graph import Graph, to_svg
from nurture.reporting import views
from nurture.reporting.format import count, current_style, money, pct, price
from nurture.reporting.report import JourneyReport, Report

CSS = """
body{font-family:Helvetica,Arial,sans-serif;color:#1f2933;margin:0;background:#f4f5f7}
main{max-width:1320px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px 0}h2{font-size:20px;margin:32px 0 8px 0}h3{font-size:16px;margin:20px 0 8px 0}
.card{background:#fff;border-radius:8px;padding:20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.06);overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:right;padding:6px 8px;border-bottom:1px solid #e5e7eb;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f9fafb;font-weight:600}
tr.total td{font-weight:600;border-top:2px solid #9ca3af}
.muted{color:#6b7280;font-size:13px}.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.kpi{background:#f9fafb;border-radius:6px;padding:10px 14px;min-width:120px}.kpi b{display:block;font-size:18px;white-space:nowrap}
.headline{font-size:17px;margin:10px 0;padding:10px 14px;border-left:4px solid #2563eb;background:#eff6ff}
.warn{border-left-color:#d97706;background:#fffbeb}
.two td:nth-child(2),.two th:nth-child(2){text-align:left}.pos{color:#047857}.neg{color:#b91c1c}
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
td.wrap{white-space:normal;min-width:140px}.ci{color:#6b7280;font-size:11px}table.money{width:auto}
table.money td,table.money th{padding-right:18px}
.graph svg{max-width:100%;height:auto}
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline(text: str) -> str:
    """Escaped text with the little markdown a description or note may carry (`code`, **bold**)
    rendered as HTML — never shown as raw markdown."""
    html = escape(text)
    html = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", html)


def _funnel_svg(r: JourneyReport) -> str:
    stages = [("entered", r.entered), ("messaged group", r.treated), ("received a message", r.recipients),
              ("converted after a message", r.attributed_conversions)]
    top = max(1, stages[0][1])
    width, bar_h, gap, label_w = 520, 22, 8, 190
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 70}" '
             f'height="{len(stages) * (bar_h + gap)}" role="img" aria-label="funnel of {escape(r.name)}">']
    for i, (label, n) in enumerate(stages):
        y = i * (bar_h + gap)
        w = max(2, int(width * n / top))
        parts.append(f'<text x="0" y="{y + 15}" font-size="12" fill="#374151">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="3" fill="#2563eb" '
                     f'fill-opacity="{1 - i * 0.18:.2f}"/>'
                     f'<text x="{label_w + w + 6}" y="{y + 15}" font-size="12" fill="#111827">{count(n)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ticks(top: int) -> list[int]:
    """Round y-axis ticks from 0 to at least `top`: a step of 1, 2 or 5 × 10ⁿ, at most six ticks."""
    magnitude = 1
    while True:
        for multiple_of in (1, 2, 5):
            step = multiple_of * magnitude
            if top <= 5 * step:
                return [i * step for i in range(-(-top // step) + 1)]
        magnitude *= 10


def _daily_svg(report: Report) -> str:
    """Conversions per day as bars, with a y axis (conversions, round ticks and grid lines) and an
    x axis (dates, tick marks); each bar's tooltip has the day's revenue."""
    days = report.daily
    width, height, pad, top_pad = 900, 180, 40, 10
    ticks = _nice_ticks(max(1, max(n for _, n, _ in days)))
    top = ticks[-1]
    step = (width - pad) / len(days)
    y = lambda n: height - (height - top_pad) * n / top  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" role="img" '
             f'aria-label="daily conversions">']
    for t in ticks:
        parts.append(f'<line class="tick y" x1="{pad - 4}" y1="{y(t):.1f}" x2="{width}" y2="{y(t):.1f}" '
                     f'stroke="{"#9ca3af" if t == 0 else "#e5e7eb"}"/>'
                     f'<text x="{pad - 8}" y="{y(t) + 4:.1f}" font-size="11" fill="#6b7280" '
                     f'text-anchor="end">{escape(count(t))}</text>')
    parts.append(f'<line x1="{pad}" y1="{top_pad}" x2="{pad}" y2="{height}" stroke="#9ca3af"/>'
                 f'<text x="{pad}" y="{top_pad - 2}" font-size="11" fill="#6b7280">conversions</text>')
    label_every = max(1, len(days) // 10)
    for i, (day, n, revenue) in enumerate(days):
        h = height - y(n)
        x = pad + i * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{y(n):.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}" '
                     f'fill="#10b981"><title>{day.isoformat()}: {n} conversions, {escape(money(revenue))}</title></rect>')
        if i % label_every == 0:
            mid = x + step / 2
            parts.append(f'<line class="tick x" x1="{mid:.1f}" y1="{height}" x2="{mid:.1f}" y2="{height + 4}" '
                         f'stroke="#9ca3af"/><text x="{mid:.1f}" y="{height + 17}" font-size="10" fill="#6b7280" '
                         f'text-anchor="middle">{day.strftime("%m-%d")}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CI = re.compile(r"^(.*) \((95% CI .*)\)$")
WRAPPED = {"deferred", "suppressed", "skipped"}  # lists of reasons may wrap; figures never do


def _cell(value: object, header: str) -> str:
    text = str(value)
    m = _CI.match(text)
    if m:  # a figure with its interval: the interval on a second, quieter line
        return f'<td>{escape(m.group(1))}<br><span class="ci">{escape(m.group(2))}</span></td>'
    return f'<td class="wrap">{escape(text)}</td>' if header in WRAPPED else f"<td>{escape(text)}</td>"


def _table(headers: list[str], rows: list[list[object]], cls: str = "", total: list[object] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, h) for c, h in zip(row, headers)) + "</tr>" for row in rows)
    if total is not None:
        body += '<tr class="total">' + "".join(_cell(c, h) for c, h in zip(total, headers)) + "</tr>"
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


GRAPH_NOTE = ("Counts from the message log: per send step its outcomes, per step the contacts there now, "
              "per split arm its members")


def _journey(r: JourneyReport, report: Report, graph: Optional[Graph] = None, index: int = 0) -> str:
    warn = "" if (r.has_value and r.roi_basis == "incremental") or not r.goal else " warn"
    headline = f'<p class="headline{warn}">{inline(views.headline_text(r))}</p>'
    if r.recommendation:
        headline += f'<p class="muted">{inline(r.recommendation)}</p>'
    lift = r.lift
    cls = ""
    if lift is not None and lift.low is not None:
        cls = "pos" if lift.low > 0 else "neg" if lift.high < 0 else ""
    conversions, rate, holdout_rate, lift_text = views.conversion_cells(r)
    kpis = [("entered", count(r.entered)), ("messaged group", count(r.treated)), ("holdout", count(r.holdout)),
            ("conversions after the start", f"{conversions} ({rate})"),
            ("holdout conversion rate", holdout_rate)]
    kpi_html = "".join(f'<div class="kpi"><span class="muted">{escape(k)}</span><b>{escape(v)}</b></div>'
                       for k, v in kpis)
    kpi_html += (f'<div class="kpi"><span class="muted">lift (points)</span><b class="{cls}">{escape(lift_text)}</b>'
                 '</div>')
    money_headers, money_rows = views.money_table(r)
    parts = [f'<section class="card" id="journey-{escape(r.name)}"><h2>{escape(r.name)}</h2>',
             f'<p class="muted">{inline(r.description)} Goal: {escape(r.goal or "none")} · '
             f'{escape(views.period_text(r.started_at, report.generated_at))}.</p>',
             headline, f'<div class="kpis">{kpi_html}</div>']
    if r.goal:
        parts.append(_table(money_headers, money_rows, cls="money"))
        if r.has_value:
            parts.append(f'<p class="muted">{escape(views.ATTRIBUTED_NOTE)}. Costs: messages '
                         f'({count(sum(r.sent.values()))} sent'
                         + (f", {count(r.sms_segments)} SMS segments" if r.sms_segments else "")
                         + (f", {count(r.sms_estimated)} estimated" if r.sms_estimated else "")
                         + f"), offers ({count(r.offers_redeemed)} redeemed), fixed costs.</p>")
    if r.entered:
        parts.append(_funnel_svg(r))
    if graph is not None:
        parts.append(f'<h3>Journey map</h3><p class="muted">{escape(GRAPH_NOTE)}.</p>'
                     f'<div class="graph">{to_svg(graph, ident=f"j{index}")}</div>')
    headers, rows = views.step_table(r)
    if rows:
        parts.append(f"<h3>Steps</h3>{_table(headers, rows)}")
        if any(s.opens is not None for s in r.steps):
            parts.append(f'<p class="muted">{escape(views.OPENS_NOTE)}.</p>')
    for split in r.splits:
        if not any(a.recipients for a in split.arms):
            continue
        h, rows = views.split_table(split)
        parts.append(f"<h3>A/B split {escape(split.step)}</h3><p class=\"muted\">Difference of the conversion rate "
                     f"to arm {escape(split.arms[0].name)}, 95% Newcombe interval.</p>{_table(h, rows)}")
        decision = views.decision_text(split)
        if decision:
            parts.append(f'<p class="headline">{inline(decision)}</p>')
    if r.objectives:
        parts.append(f"<h3>Objectives</h3>{_table(*views.objective_table(r.objectives))}")
    if r.speed_to_lead_minutes.n:
        parts.append(f'<p class="muted">{escape(views.speed_to_lead_text(r))}.</p>')
    parts.append(f'<p class="muted">Unsubscribe rate {pct(r.unsubscribe_rate)} · bounce rate {pct(r.bounce_rate)} '
                 f'(of {count(r.recipients)} recipients).</p></section>')
    return "".join(parts)


def _overview(report: Report) -> str:
    headers = ["journey", "entered", "conversions after the start", "rate", "lift", "incremental revenue",
               "attributed revenue", "cost", "ROI"]
    rows = []
    for r in report.journeys:
        conversions, rate, _, _ = views.conversion_cells(r)
        rows.append([r.name, count(r.entered), conversions, rate, views.lift_text(r), views.incremental_cell(r),
                     money(r.attributed_revenue), money(r.cost), views.roi_cell(r)])
    t = report.totals()
    total = ["total", count(t["entered"]), count(sum(r.credited for r in report.journeys)), "", "",
             money(t["incremental_revenue"]), money(t["attributed_revenue"]), money(t["costs"]["total"]),
             views.total_roi_cell(t)]
    return _table(headers, rows, total=total)


def _business(report: Report) -> str:
    """Lead sources, business KPIs and the project's objectives; "" when there is nothing to show."""
    parts = []
    if report.objectives:
        parts.append(f"<h3>Objectives of the project</h3>{_table(*views.objective_table(report.objectives))}")
    headers, rows, total = views.sources_table(report)
    if rows:
        parts.append(f'<h3>Lead sources</h3><p class="muted">{escape(views.SOURCES_NOTE)}.</p>'
                     f'{_table(headers, rows, cls="two", total=total)}')
    items = views.kpi_items(report)
    if items:
        parts.append('<div class="kpis">' + "".join(f'<div class="kpi"><span class="muted">{escape(k)}</span>'
                                                    f'<b>{escape(v)}</b></div>' for k, v in items) + "</div>")
    off = views.off_standard_text(report)
    if off:
        parts.append(f'<p class="headline warn">{inline(off)}</p>')
    if not parts:
        return ""
    return '<section class="card" id="business"><h2>Lead sources, KPIs and objectives</h2>' + "".join(parts) + \
        "</section>"


def render_html(report: Report, title: str = "Nurture report", graphs: Optional[Mapping[str, Graph]] = None) -> str:
    """The page; `graphs` (journey name → its diagram, nurture.graph.journey_graphs) adds each
    journey's map to its section."""
    graphs = graphs or {}
    sections = [f'<section class="card"><h2>Overview</h2>{_overview(report)}<p class="muted">ROI is the '
                'incremental one — (incremental revenue − cost) / cost, measured against the holdout — wherever '
                f'a journey has a holdout. {escape(views.ATTRIBUTED_NOTE)}. {escape(views.START_NOTE)}.</p>'
                '</section>']
    if report.daily:
        sections.append(f'<section class="card"><h2>Daily conversions</h2>{_daily_svg(report)}</section>')
    sections.append(_business(report))
    if report.attribution or report.unattributed[0]:
        symbol = current_style().symbol
        attribution = _table(
            ["journey", "step", "last touch", "first touch", "position 40/20/40", f"last touch {symbol}",
             f"first touch {symbol}", f"position {symbol}"],
            [[a.journey, a.step, count(a.conversions["last_touch"]), count(a.conversions["first_touch"]),
              count(a.conversions["position_based"]), views.attribution_money(report, a, "last_touch"),
              views.attribution_money(report, a, "first_touch"), views.attribution_money(report, a, "position_based")]
             for a in report.attribution], cls="two")
        n, rev = report.unattributed
        sections.append(f'<section class="card"><h2>Attribution</h2><p class="muted">Conversions and revenue '
                        f'credited to the messages a converter received in the 30 days before converting. {count(n)} '
                        f'conversion(s) ({escape(money(rev))}) had no message before them.</p>{attribution}</section>')
    h = report.handovers
    if h.total:
        handover = _table(["handed over", "delivered", "pending", "failed", "contacted within SLA", "contacted late",
                           "open (SLA running)", "overdue"],
                          [[h.total, h.delivered, h.pending, h.failed, h.contacted_within_sla, h.contacted_late,
                            h.open_within_sla, h.overdue]])
        sections.append('<section class="card"><h2>Sales handover</h2><p class="muted">MQLs handed to sales; '
                        'contacted = a <code>sales_contacted</code> event after the handover.</p>'
                        f'{handover}</section>')
    t = report.totals()
    unit_costs = ", ".join(f"{k} {price(v)}" + (" per segment" if k == "sms" else "")
                           for k, v in sorted(report.unit_costs.items()))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body><main>'
            f'<h1>{escape(title)}</h1><p class="muted">Period {escape(views.period_text(report.period_start, report.generated_at))}'
            f' · incremental revenue {escape(money(t["incremental_revenue"]))} · attributed revenue '
            f'{escape(money(t["attributed_revenue"]))} · cost {escape(money(t["costs"]["total"]))} · unit costs '
            f'{escape(unit_costs)}</p>'
            + "".join(sections)
            + "".join(_journey(r, report, graphs.get(r.name), i) for i, r in enumerate(report.journeys))
            + "</main></body></html>")
