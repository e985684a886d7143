"""A journey as a diagram (`nurture graph`): the compiled plan's steps and the paths between them
— next, branch then/else, wait_for then/timeout, split arms — as Mermaid text and as one
self-contained SVG (no scripts, no fonts to fetch), with the counts per step from the store:
messages sent by a send step and enrollments waiting at a step now.

The layout is layered: a step's row is the longest path to it from the first step (the plan's
edges all point forward), its column its place among the steps of that row in plan order."""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any, Mapping, Optional

from sqlalchemy import func, select

from nurture.compiler import Plan
from nurture.durations import format_duration
from nurture.store.models import SENT
from nurture.store.tables import enrollment_t, message_t


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""


@dataclass
class Graph:
    journey: str
    nodes: dict[str, str] = field(default_factory=dict)  # step id → what it does, in one line
    kinds: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    counts: dict[str, str] = field(default_factory=dict)  # step id → "120 sent", "14 waiting"


def describe(node: Any) -> str:
    step = node.step
    if step.send is not None:
        return f"send {step.send.channel}: {step.send.template}"
    if step.wait is not None:
        return f"wait {format_duration(step.wait)}"
    if step.wait_until is not None:
        days = f" on {', '.join(step.wait_until.weekdays)}" if step.wait_until.weekdays else ""
        return f"wait until {step.wait_until.time}{days}"
    if step.wait_for is not None:
        return f"wait for {step.wait_for.event} ({format_duration(step.wait_for.within)})"
    if step.branch is not None:
        return "branch"
    if step.split is not None:
        return "split " + " / ".join(f"{a.name} {a.weight:g}" for a in step.split)
    if step.update is not None:
        return "update"
    if step.handover is not None:
        return "handover to sales"
    return f"exit ({step.exit.reason})" if step.exit is not None else node.kind


def build_graph(plan: Plan, counts: Optional[Mapping[str, str]] = None) -> Graph:
    graph = Graph(plan.name)
    end = "end"
    for sid in plan.order:
        node = plan.nodes[sid]
        graph.nodes[sid] = describe(node)
        graph.kinds[sid] = node.kind
        if node.kind == "split":
            graph.edges += [Edge(sid, first or end, name) for name, _, first in node.arms]
        elif node.kind == "branch":
            graph.edges += [Edge(sid, node.then_first or end, "then"), Edge(sid, node.else_first or end, "else")]
        elif node.kind == "wait_for":
            graph.edges += [Edge(sid, node.then_first or end, "then"), Edge(sid, node.else_first or end, "timeout")]
        elif node.kind != "exit":
            graph.edges.append(Edge(sid, node.next or end))
    graph.nodes[end] = "end of the journey"
    graph.kinds[end] = "end"
    graph.counts = dict(counts or {})
    return graph


def step_counts(conn: Any, journey: str) -> dict[str, str]:
    """Per step: messages sent (send steps) and enrollments at the step now (any step)."""
    out: dict[str, list[str]] = {}
    for step, n in conn.execute(select(message_t.c.step_id, func.count())
                                .where(message_t.c.journey == journey, message_t.c.status == SENT)
                                .group_by(message_t.c.step_id)):
        out.setdefault(step, []).append(f"{n:,} sent")
    for step, n in conn.execute(select(enrollment_t.c.step_id, func.count())
                                .where(enrollment_t.c.journey == journey, enrollment_t.c.status == "active",
                                       enrollment_t.c.step_id.is_not(None))
                                .group_by(enrollment_t.c.step_id)):
        out.setdefault(step, []).append(f"{n:,} here now")
    return {step: ", ".join(parts) for step, parts in out.items()}


def _mermaid_id(sid: str) -> str:
    return f"s_{sid}"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "'").replace("\n", " ")


def to_mermaid(graph: Graph) -> str:
    shapes = {"send": ('["', '"]'), "branch": ('{"', '"}'), "wait_for": ('{"', '"}'), "split": ('{{"', '"}}'),
              "exit": ('(["', '"])'), "end": ('(["', '"])'), "wait": ('("', '")'), "wait_until": ('("', '")')}
    lines = ["flowchart TD"]
    for sid, text in graph.nodes.items():
        left, right = shapes.get(graph.kinds[sid], ('["', '"]'))
        count = graph.counts.get(sid)
        label = f"{sid}<br/>{text}" + (f"<br/>{count}" if count else "")
        lines.append(f"    {_mermaid_id(sid)}{left}{_mermaid_text(label)}{right}")
    for e in graph.edges:
        arrow = f" -->|{_mermaid_text(e.label)}| " if e.label else " --> "
        lines.append(f"    {_mermaid_id(e.source)}{arrow}{_mermaid_id(e.target)}")
    return "\n".join(lines) + "\n"


BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 230, 58, 40, 46, 20
COLORS = {"send": "#dbeafe", "wait": "#f3f4f6", "wait_until": "#f3f4f6", "wait_for": "#fef3c7", "branch": "#fef3c7",
          "split": "#ede9fe", "update": "#dcfce7", "handover": "#fce7f3", "exit": "#fee2e2", "end": "#e5e7eb"}


def _layers(graph: Graph) -> dict[str, int]:
    """Row of each step: the longest path to it (edges point forward in plan order)."""
    order = list(graph.nodes)
    row = {sid: 0 for sid in order}
    for sid in order:  # plan order is topological; "end" comes last
        for e in graph.edges:
            if e.source == sid:
                row[e.target] = max(row[e.target], row[sid] + 1)
    return row


def to_svg(graph: Graph, title: Optional[str] = None) -> str:
    rows = _layers(graph)
    by_row: dict[int, list[str]] = {}
    for sid in graph.nodes:
        by_row.setdefault(rows[sid], []).append(sid)
    width = PAD * 2 + max(len(v) for v in by_row.values()) * (BOX_W + GAP_X) - GAP_X + GAP_X * 2  # room for detours
    height = PAD * 2 + 24 + len(by_row) * (BOX_H + GAP_Y) - GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for r, sids in by_row.items():
        span = len(sids) * (BOX_W + GAP_X) - GAP_X
        left = (width - span) / 2
        for i, sid in enumerate(sids):
            pos[sid] = (left + i * (BOX_W + GAP_X), PAD + 24 + r * (BOX_H + GAP_Y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="journey {escape(graph.journey)}" '
             'font-family="Helvetica,Arial,sans-serif">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
             f'<text x="{PAD}" y="{PAD + 4}" font-size="15" font-weight="bold" fill="#111827">'
             f'{escape(title or graph.journey)}</text>']
    for e in graph.edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        if rows[e.target] - rows[e.source] > 1 and abs(x1 - x2) < BOX_W:
            # a path that skips rows goes round the boxes between, on the right
            sx, sy, tx, ty = x1 + BOX_W, y1 + BOX_H / 2, x2 + BOX_W, y2 + BOX_H / 2
            bend = max(sx, tx) + GAP_X * 0.8
            parts.append(f'<path d="M{sx:.0f},{sy:.0f} C{bend:.0f},{sy:.0f} {bend:.0f},{ty:.0f} {tx:.0f},{ty:.0f}" '
                         'fill="none" stroke="#9ca3af" stroke-width="1.5" marker-end="url(#arrow)"/>')
            lx, ly = bend - 6, (sy + ty) / 2
        else:
            sx, sy, tx, ty = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
            parts.append(f'<path d="M{sx:.0f},{sy:.0f} C{sx:.0f},{sy + 30:.0f} {tx:.0f},{ty - 30:.0f} {tx:.0f},{ty:.0f}" '
                         'fill="none" stroke="#9ca3af" stroke-width="1.5" marker-end="url(#arrow)"/>')
            lx, ly = (sx + tx) / 2 + 4, (sy + ty) / 2
        if e.label:
            parts.append(f'<text x="{lx:.0f}" y="{ly:.0f}" font-size="11" fill="#4b5563">{escape(e.label)}</text>')
    for sid, text in graph.nodes.items():
        x, y = pos[sid]
        kind = graph.kinds[sid]
        radius = 18 if kind in ("exit", "end") else 6
        parts.append(f'<g class="step" data-step="{escape(sid)}"><rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" '
                     f'height="{BOX_H}" rx="{radius}" fill="{COLORS.get(kind, "#ffffff")}" stroke="#6b7280"/>'
                     f'<text x="{x + 10:.0f}" y="{y + 18:.0f}" font-size="13" font-weight="bold" fill="#111827">'
                     f'{escape(sid)}</text>'
                     f'<text x="{x + 10:.0f}" y="{y + 34:.0f}" font-size="11" fill="#374151">{escape(_fit(text))}</text>')
        count = graph.counts.get(sid)
        if count:
            parts.append(f'<text x="{x + 10:.0f}" y="{y + 50:.0f}" font-size="11" fill="#047857">{escape(count)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, limit: int = 36) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
