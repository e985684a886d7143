"""The report as one self-contained HTML file: inline CSS and inline SVG charts (a funnel per
journey, daily conversions), no scripts, no CDN — it opens offline and can be mailed."""
from __future__ import annotations

from html import escape

from nurture.reporting.format import money, pct, signed_points
from nurture.reporting.report import JourneyReport, Report
from nurture.reporting.summary import step_rows

CSS = """
body{font-family:Helvetica,Arial,sans-serif;color:#1f2933;margin:0;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px 0}h2{font-size:20px;margin:32px 0 8px 0}h3{font-size:16px;margin:20px 0 8px 0}
.card{background:#fff;border-radius:8px;padding:20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:right;padding:6px 8px;border-bottom:1px solid #e5e7eb}
th:first-child,td:first-child{text-align:left}th{background:#f9fafb;font-weight:600}
.muted{color:#6b7280;font-size:13px}.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.kpi{background:#f9fafb;border-radius:6px;padding:10px 14px;min-width:120px}.kpi b{display:block;font-size:18px}
.two td:nth-child(2),.two th:nth-child(2){text-align:left}.pos{color:#047857}.neg{color:#b91c1c}
"""


def _funnel_svg(r: JourneyReport) -> str:
    stages = [("entered", r.entered), ("messaged group", r.treated), ("received a message", r.recipients),
              ("converted", r.converted)]
    top = max(1, stages[0][1])
    width, bar_h, gap, label_w = 520, 22, 8, 150
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 60}" '
             f'height="{len(stages) * (bar_h + gap)}" role="img" aria-label="funnel of {escape(r.name)}">']
    for i, (label, n) in enumerate(stages):
        y = i * (bar_h + gap)
        w = max(2, int(width * n / top))
        parts.append(f'<text x="0" y="{y + 15}" font-size="12" fill="#374151">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="3" fill="#2563eb" '
                     f'fill-opacity="{1 - i * 0.18:.2f}"/>'
                     f'<text x="{label_w + w + 6}" y="{y + 15}" font-size="12" fill="#111827">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _daily_svg(report: Report) -> str:
    days = report.daily
    if not days:
        return '<p class="muted">No conversions yet.</p>'
    width, height, pad = 900, 180, 30
    top = max(1, max(n for _, n, _ in days))
    step = (width - pad) / len(days)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" role="img" '
             f'aria-label="daily conversions">',
             f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#9ca3af"/>',
             f'<text x="0" y="12" font-size="11" fill="#6b7280">{top}</text>',
             f'<text x="0" y="{height}" font-size="11" fill="#6b7280">0</text>']
    for i, (day, n, revenue) in enumerate(days):
        h = (height - 10) * n / top
        x = pad + i * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - h:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}" '
                     f'fill="#10b981"><title>{day.isoformat()}: {n} conversions, {escape(money(revenue))}</title></rect>')
        if i % max(1, len(days) // 10) == 0:
            parts.append(f'<text x="{x:.1f}" y="{height + 16}" font-size="10" fill="#6b7280">{day.strftime("%m-%d")}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[object]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _journey(r: JourneyReport) -> str:
    lift = r.lift
    if lift is not None and lift.low is not None:
        cls = "pos" if lift.low > 0 else "neg" if lift.high < 0 else ""
        lift_html = (f'<span class="{cls}">{signed_points(lift.difference)}</span>'
                     f'<span class="muted"> 95% CI {signed_points(lift.low)} … {signed_points(lift.high)}</span>')
    else:
        lift_html = '<span class="muted">no holdout</span>'
    kpis = [("entered", str(r.entered)), ("conversions", f"{r.converted} ({pct(r.conversion_rate)})"),
            ("holdout", f"{r.converted_holdout}/{r.holdout} ({pct(r.holdout_rate)})"),
            ("revenue", money(r.revenue)), ("cost", money(r.cost)),
            ("ROI", "n/a" if r.roi is None else f"{r.roi:,.1f}×"),
            ("revenue / recipient", money(r.revenue_per_recipient)),
            ("unsubscribe rate", pct(r.unsubscribe_rate)), ("bounce rate", pct(r.bounce_rate))]
    kpi_html = "".join(f'<div class="kpi"><span class="muted">{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in kpis)
    rows = [[s["step"], s["channel"], s["reached"], s["sent"], s["deferred"], s["suppressed"], s["skipped"],
             s["failed"], s["holdout"], s["conversions"], money(s["revenue"]), money(s["cost"])] for s in step_rows(r)]
    steps = _table(["step", "channel", "reached", "sent", "deferred", "suppressed", "skipped", "failed", "holdout",
                    "conversions", "revenue", "cost"], rows)
    return (f'<section class="card" id="journey-{escape(r.name)}"><h2>{escape(r.name)}</h2>'
            f'<p class="muted">{escape(r.description)} Goal: {escape(r.goal or "none")}.</p>'
            f'<div class="kpis">{kpi_html}</div><p>Lift against the holdout: {lift_html}</p>'
            f'{_funnel_svg(r)}<h3>Steps</h3>{steps}</section>')


def render_html(report: Report, title: str = "Nurture report") -> str:
    overview = _table(["journey", "entered", "conversions", "rate", "lift (pts)", "revenue", "cost", "ROI"],
                      [[r.name, r.entered, r.converted, pct(r.conversion_rate),
                        signed_points(r.lift.difference) if r.lift and r.lift.low is not None else "n/a",
                        money(r.revenue), money(r.cost), "n/a" if r.roi is None else f"{r.roi:,.1f}×"]
                       for r in report.journeys])
    attribution = _table(
        ["journey", "step", "last touch", "first touch", "position 40/20/40", "last touch €", "first touch €",
         "position €"],
        [[a.journey, a.step, f"{a.conversions['last_touch']:.1f}", f"{a.conversions['first_touch']:.1f}",
          f"{a.conversions['position_based']:.1f}", money(a.revenue["last_touch"]), money(a.revenue["first_touch"]),
          money(a.revenue["position_based"])] for a in report.attribution], cls="two")
    h = report.handovers
    handover = _table(["handed over", "delivered", "pending", "failed", "contacted within SLA", "contacted late",
                       "open (SLA running)", "overdue"],
                      [[h.total, h.delivered, h.pending, h.failed, h.contacted_within_sla, h.contacted_late,
                        h.open_within_sla, h.overdue]])
    unattributed_n, unattributed_rev = report.unattributed
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body><main>'
            f'<h1>{escape(title)}</h1><p class="muted">As of {report.generated_at:%Y-%m-%d %H:%M} UTC · revenue '
            f'{money(report.total_revenue)} · cost {money(report.total_cost)} · unit costs '
            f'{escape(", ".join(f"{k} {v}" for k, v in sorted(report.unit_costs.items())))}</p>'
            f'<section class="card"><h2>Overview</h2>{overview}</section>'
            f'<section class="card"><h2>Daily conversions</h2>{_daily_svg(report)}</section>'
            f'<section class="card"><h2>Attribution</h2><p class="muted">Conversions and revenue credited to the '
            f'messages a converter received in the 30 days before converting. {unattributed_n} conversion(s) '
            f'({escape(money(unattributed_rev))}) had no message before them.</p>{attribution}</section>'
            f'<section class="card"><h2>Sales handover</h2><p class="muted">MQLs handed to sales; contacted = a '
            f'<code>sales_contacted</code> event after the handover.</p>{handover}</section>'
            + "".join(_journey(r) for r in report.journeys) + "</main></body></html>")
