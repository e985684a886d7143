"""A journey as a diagram (`nurture graph`, and one per journey in the HTML report): the
compiled plan's steps and the paths between them — next, branch then/else, wait_for
then/timeout, split arms — between a start node (the trigger) and an end node, as Mermaid text
and as one self-contained SVG (no scripts, no fonts to fetch, every user-written text escaped),
with the counts from the message log and the enrollments (`journey_counts`):

    start       enrollments that entered, of them in the holdout
    send step   its outcomes as the report counts them: sent, queued (not delivered yet),
                deferred (each deferral), suppressed, skipped, failed, holdout
    any step    enrollments at the step now ("here now")
    split arm   members of the arm (the report's A/B figure: nurture.reporting.splits)
    end         enrollments that completed the journey

The start and end nodes have keys no step id can have (step ids are `[a-z][a-z0-9_]*`), so a
step called `end` is a step like any other.

The layout is layered: a step's row is the longest path to it from the start (the plan's
edges all point forward), its column its place among the steps of that row in plan order."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import func, select

from nurture.compiler import Plan, compile_journey
from nurture.durations import format_duration
from nurture.reporting.splits import arm_stats
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.models import FAILED, HOLDOUT, QUEUED, SENDING, SENT, SKIPPED, SUPPRESSED
from nurture.store.tables import enrollment_t, message_t

START, END = "(start)", "(end)"  # node keys no step id can be
# The outcomes of a send step, in the order the diagram names them.
OUTCOMES = ("sent", "queued", "deferred", "suppressed", "skipped", "failed", "holdout")
_FINAL = {SENT: "sent", QUEUED: "queued", SENDING: "queued", SUPPRESSED: "suppressed", SKIPPED: "skipped",
          FAILED: "failed", HOLDOUT: "holdout"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""
    count: str = ""  # a split arm's members: "12"


@dataclass
class Graph:
    journey: str
    nodes: dict[str, str] = field(default_factory=dict)  # node key → what it does, in one line
    kinds: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    counts: dict[str, str] = field(default_factory=dict)  # node key → "120 sent, 3 deferred, 14 here now"

    def name_of(self, key: str) -> str:
        """What a node is called on the diagram: its step id, or start / end."""
        return {START: "start", END: "end"}.get(key, key)


@dataclass
class JourneyCounts:
    """The figures of one journey's diagram, read from the store (`journey_counts`)."""
    entered: int = 0
    holdout: int = 0
    completed: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # send step → outcome → messages
    here: dict[str, int] = field(default_factory=dict)  # step → active enrollments there now
    arms: dict[tuple[str, str], int] = field(default_factory=dict)  # (split step, arm) → members

    def labels(self) -> dict[str, str]:
        """Node key → its counts in words ("3 sent, 1 deferred, 2 here now"); none for a node
        without any."""
        out: dict[str, list[str]] = {}
        if self.entered:
            out[START] = [f"{self.entered:,} entered"] + ([f"{self.holdout:,} holdout"] if self.holdout else [])
        if self.completed:
            out[END] = [f"{self.completed:,} completed"]
        for step, outcomes in self.outcomes.items():
            out.setdefault(step, []).extend(f"{outcomes[o]:,} {o}" for o in OUTCOMES if outcomes.get(o))
        for step, n in self.here.items():
            out.setdefault(step, []).append(f"{n:,} here now")
        return {key: ", ".join(parts) for key, parts in out.items() if parts}


def describe(node: Any) -> str:
    step = node.step
    if step.send is not None:
        return f"send {'/'.join(step.send.options)}: {step.send.template}"
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


def describe_trigger(trigger: Any) -> str:
    if trigger.event:
        return f"on event {trigger.event}"
    if trigger.date:
        return f"on date {trigger.date}"
    if trigger.segment:
        return f"in segment {trigger.segment}"
    return "when the condition holds" if trigger.when is not None else "trigger"


def build_graph(plan: Plan, counts: Optional[Mapping[str, str]] = None,
                arms: Optional[Mapping[tuple[str, str], int]] = None) -> Graph:
    """The plan as a graph; `counts` label its nodes (JourneyCounts.labels), `arms` its split
    arms (members per (split step, arm))."""
    graph = Graph(plan.name)
    arms = arms or {}
    graph.nodes[START] = describe_trigger(plan.journey.trigger)
    graph.kinds[START] = "start"
    graph.edges.append(Edge(START, plan.first or END))
    for sid in plan.order:
        node = plan.nodes[sid]
        graph.nodes[sid] = describe(node)
        graph.kinds[sid] = node.kind
        if node.kind == "split":
            graph.edges += [Edge(sid, first or END, name, f"{arms[(sid, name)]:,}" if (sid, name) in arms else "")
                            for name, _, first in node.arms]
        elif node.kind == "branch":
            graph.edges += [Edge(sid, node.then_first or END, "then"), Edge(sid, node.else_first or END, "else")]
        elif node.kind == "wait_for":
            graph.edges += [Edge(sid, node.then_first or END, "then"), Edge(sid, node.else_first or END, "timeout")]
        elif node.kind != "exit":
            graph.edges.append(Edge(sid, node.next or END))
    graph.nodes[END] = "end of the journey"
    graph.kinds[END] = "end"
    graph.counts = dict(counts or {})
    return graph


def journey_counts(conn: Any, journey: str, plan: Optional[Plan] = None) -> JourneyCounts:
    """The diagram's figures of `journey`, from the message log and the enrollments, as the
    report counts them (nurture.reporting.report): a send step's final row per arrival by
    status, each deferral row as one deferral; Nurture's own mail (no enrollment) is no step's.
    The split arms need the `plan`."""
    counts = JourneyCounts()
    for status, holdout, n in conn.execute(select(enrollment_t.c.status, enrollment_t.c.holdout, func.count())
                                           .where(enrollment_t.c.journey == journey)
                                           .group_by(enrollment_t.c.status, enrollment_t.c.holdout)):
        counts.entered += n
        counts.holdout += n if holdout else 0
        counts.completed += n if status == "completed" else 0
    final = (message_t.c.attempt_key == "send").label("final")  # 'defer:N' rows record deferrals
    for step, is_final, status, n in conn.execute(
            select(message_t.c.step_id, final, message_t.c.status, func.count())
            .where(message_t.c.journey == journey, message_t.c.enrollment_id.is_not(None))
            .group_by(message_t.c.step_id, final, message_t.c.status)):
        outcome = _FINAL.get(status, status) if is_final else "deferred"
        by_outcome = counts.outcomes.setdefault(step, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    for step, n in conn.execute(select(enrollment_t.c.step_id, func.count())
                                .where(enrollment_t.c.journey == journey, enrollment_t.c.status == "active",
                                       enrollment_t.c.step_id.is_not(None))
                                .group_by(enrollment_t.c.step_id)):
        counts.here[step] = n
    if plan is not None:
        for sid in plan.order:
            if plan.nodes[sid].kind == "split":
                for arm in arm_stats(conn, plan, sid)[0]:
                    counts.arms[(sid, arm.name)] = arm.recipients
    return counts


def step_counts(conn: Any, journey: str) -> dict[str, str]:
    """Node key → its counts in words (JourneyCounts.labels), without the split arms."""
    return journey_counts(conn, journey).labels()


def journey_graph(conn: Any, plan: Plan) -> Graph:
    """The plan's diagram with its counts from the store."""
    counts = journey_counts(conn, plan.name, plan)
    return build_graph(plan, counts.labels(), counts.arms)


def journey_graphs(store: Store, project: ProjectSpec, names: Iterable[str]) -> dict[str, Graph]:
    """The diagram of each named journey of the project (as its file declares it), with counts:
    what the HTML report draws per journey section."""
    out: dict[str, Graph] = {}
    with store.reading() as conn:
        for name in names:
            if name in project.journeys:
                out[name] = journey_graph(conn, compile_journey(project.journeys[name]))
    return out


def _mermaid_id(key: str) -> str:
    return {START: "journey_start", END: "journey_end"}.get(key, f"s_{key}")


def _mermaid_text(text: str) -> str:
    return text.replace('"', "'").replace("\n", " ")


_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_ ]*")


def to_mermaid(graph: Graph) -> str:
    shapes = {"send": ('["', '"]'), "branch": ('{"', '"}'), "wait_for": ('{"', '"}'), "split": ('{{"', '"}}'),
              "exit": ('(["', '"])'), "end": ('(["', '"])'), "start": ('(["', '"])'), "wait": ('("', '")'),
              "wait_until": ('("', '")')}
    lines = ["flowchart TD"]
    for key, text in graph.nodes.items():
        left, right = shapes.get(graph.kinds[key], ('["', '"]'))
        count = graph.counts.get(key)
        label = f"{graph.name_of(key)}<br/>{text}" + (f"<br/>{count}" if count else "")
        lines.append(f"    {_mermaid_id(key)}{left}{_mermaid_text(label)}{right}")
    for e in graph.edges:
        label = _edge_label(e)
        if _PLAIN_LABEL.fullmatch(label):
            arrow = f" -->|{label}| " if label else " --> "
        else:
            arrow = f' -->|"{_mermaid_text(label)}"| '
        lines.append(f"    {_mermaid_id(e.source)}{arrow}{_mermaid_id(e.target)}")
    return "\n".join(lines) + "\n"


def _edge_label(edge: Edge) -> str:
    return f"{edge.label} · {edge.count}" if edge.count else edge.label


BOX_W, GAP_X, GAP_Y, PAD, LINE = 230, 40, 46, 20, 14
COUNT_CHARS = 38  # a counts line that fits BOX_W at 11 px
COLORS = {"send": "#dbeafe", "wait": "#f3f4f6", "wait_until": "#f3f4f6", "wait_for": "#fef3c7", "branch": "#fef3c7",
          "split": "#ede9fe", "update": "#dcfce7", "handover": "#fce7f3", "exit": "#fee2e2", "end": "#e5e7eb",
          "start": "#e0e7ff"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def _layers(graph: Graph) -> dict[str, int]:
    """Row of each node: the longest path to it (edges point forward in plan order)."""
    order = list(graph.nodes)
    row = {key: 0 for key in order}
    for key in order:  # start, then plan order (topological), then end
        for e in graph.edges:
            if e.source == key:
                row[e.target] = max(row[e.target], row[key] + 1)
    return row


def _count_lines(text: str) -> list[str]:
    """A node's counts in lines that fit its box, broken after a comma."""
    lines: list[str] = []
    for part in text.split(", ") if text else []:
        if lines and len(lines[-1]) + 2 + len(part) <= COUNT_CHARS:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return lines


def to_svg(graph: Graph, title: Optional[str] = None, ident: str = "") -> str:
    """One self-contained SVG. `ident` makes its internal ids (the arrow marker) unique when
    several diagrams share one HTML page."""
    marker = "arrow" + (f"-{_SAFE_ID.sub('_', ident)}" if ident else "")
    rows = _layers(graph)
    by_row: dict[int, list[str]] = {}
    for key in graph.nodes:
        by_row.setdefault(rows[key], []).append(key)
    count_lines = {key: _count_lines(graph.counts.get(key, "")) for key in graph.nodes}
    box_h = 42 + LINE * max(1, max(len(v) for v in count_lines.values()))
    width = PAD * 2 + max(len(v) for v in by_row.values()) * (BOX_W + GAP_X) - GAP_X + GAP_X * 2  # room for detours
    height = PAD * 2 + 24 + len(by_row) * (box_h + GAP_Y) - GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for r, keys in by_row.items():
        span = len(keys) * (BOX_W + GAP_X) - GAP_X
        left = (width - span) / 2
        for i, key in enumerate(keys):
            pos[key] = (left + i * (BOX_W + GAP_X), PAD + 24 + r * (box_h + GAP_Y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="journey {escape(graph.journey)}" '
             'font-family="Helvetica,Arial,sans-serif">',
             f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
             f'<text x="{PAD}" y="{PAD + 4}" font-size="15" font-weight="bold" fill="#111827">'
             f'{escape(title or graph.journey)}</text>']
    for e in graph.edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        if rows[e.target] - rows[e.source] > 1 and abs(x1 - x2) < BOX_W:
            # a path that skips rows goes round the boxes between, on the outer side of its source
            if x1 + BOX_W / 2 < width / 2:
                sx, sy, tx, ty = x1, y1 + box_h / 2, x2, y2 + box_h / 2
                bend = min(sx, tx) - GAP_X * 0.8
            else:
                sx, sy, tx, ty = x1 + BOX_W, y1 + box_h / 2, x2 + BOX_W, y2 + box_h / 2
                bend = max(sx, tx) + GAP_X * 0.8
            parts.append(f'<path d="M{sx:.0f},{sy:.0f} C{bend:.0f},{sy:.0f} {bend:.0f},{ty:.0f} {tx:.0f},{ty:.0f}" '
                         f'fill="none" stroke="#9ca3af" stroke-width="1.5" marker-end="url(#{marker})"/>')
            lx, ly = bend - 6, (sy + ty) / 2
        else:
            sx, sy, tx, ty = x1 + BOX_W / 2, y1 + box_h, x2 + BOX_W / 2, y2
            parts.append(f'<path d="M{sx:.0f},{sy:.0f} C{sx:.0f},{sy + 30:.0f} {tx:.0f},{ty - 30:.0f} {tx:.0f},{ty:.0f}" '
                         f'fill="none" stroke="#9ca3af" stroke-width="1.5" marker-end="url(#{marker})"/>')
            lx, ly = (sx + tx) / 2 + 4, (sy + ty) / 2
        if e.label:
            parts.append(f'<text x="{lx:.0f}" y="{ly:.0f}" font-size="11" fill="#4b5563">{escape(e.label)}')
            if e.count:
                parts.append(f'<tspan fill="#047857"> · {escape(e.count)}</tspan>')
            parts.append("</text>")
    for key, text in graph.nodes.items():
        x, y = pos[key]
        kind = graph.kinds[key]
        radius = 18 if kind in ("exit", "end", "start") else 6
        step = f' data-step="{escape(key)}"' if kind not in ("start", "end") else ""
        parts.append(f'<g class="{"terminal" if kind in ("start", "end") else "step"}"{step}>'
                     f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" '
                     f'height="{box_h}" rx="{radius}" fill="{COLORS.get(kind, "#ffffff")}" stroke="#6b7280"/>'
                     f'<text x="{x + 10:.0f}" y="{y + 18:.0f}" font-size="13" font-weight="bold" fill="#111827">'
                     f'{escape(graph.name_of(key))}</text>'
                     f'<text x="{x + 10:.0f}" y="{y + 34:.0f}" font-size="11" fill="#374151">{escape(_fit(text))}</text>')
        for i, line in enumerate(count_lines[key]):
            parts.append(f'<text x="{x + 10:.0f}" y="{y + 50 + i * LINE:.0f}" font-size="11" fill="#047857">'
                         f'{escape(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, limit: int = 36) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
