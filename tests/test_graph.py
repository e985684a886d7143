"""Specification: `nurture graph` draws a journey — every step, every path (next, then/else,
then/timeout, split arms) between a start and an end node — as Mermaid text and as one
self-contained SVG whose text names every step id, with the counts of the message log: entered,
per send step its outcomes (sent, deferred, suppressed …), contacts waiting per step, members per
split arm, completed. The HTML report draws the same diagram in every journey's section."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from nurture.compiler import compile_journey
from nurture.graph import END, START, Edge, Graph, build_graph, journey_counts, journey_graph, journey_graphs, \
    step_counts, to_mermaid, to_svg
from nurture.reporting import build_report
from nurture.reporting.html_page import render_html
from nurture.runtime import Runtime, run_tick
from nurture.runtime.stable_random import pick_arm
from nurture.spec.project import load_project
from nurture.store.db import open_store
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event, journey_yaml, subscriber
from tests.test_cli import nurture

STEPS = """
- id: hello
  send: {channel: email, template: hello, subject: Hi}
- id: wait_buy
  wait_for:
    event: purchase
    within: 3d
    then: [{id: thanks, send: {channel: email, template: hello, subject: Thanks}}]
    timeout:
      - id: ab
        split:
          - {name: a, weight: 50, steps: [{id: nudge_a, send: {channel: email, template: hello, subject: A}}]}
          - {name: b, weight: 50, steps: [{id: nudge_b, wait: 1d}]}
- id: vip
  branch:
    when: {attribute: {plan: pro}}
    then: [{id: bye, exit: vip}]
"""
JOURNEY = journey_yaml("j", STEPS)
T0 = utc(2026, 3, 4, 10)


def _plan(tmp_path):
    spec = load_project(write_project(tmp_path / "p", {"j": JOURNEY}))
    return compile_journey(spec.journeys["j"])


def test_every_step_and_every_labelled_path_is_in_the_mermaid_text(tmp_path):
    text = to_mermaid(build_graph(_plan(tmp_path)))
    assert text.startswith("flowchart TD\n")
    for sid in ("hello", "wait_buy", "thanks", "ab", "nudge_a", "nudge_b", "vip", "bye"):
        assert re.search(rf"^    s_{sid}[\[\(\{{]", text, re.M), sid
    assert re.search(r"^    journey_start\(\[\"start<br/>on event signup\"\]\)$", text, re.M)
    assert re.search(r"^    journey_end\(\[", text, re.M)
    for edge in ("journey_start --> s_hello", "s_hello --> s_wait_buy", "s_wait_buy -->|then| s_thanks",
                 "s_wait_buy -->|timeout| s_ab", "s_ab -->|a| s_nudge_a", "s_ab -->|b| s_nudge_b",
                 "s_vip -->|then| s_bye", "s_vip -->|else| journey_end"):
        assert edge in text, edge
    assert "s_bye -->" not in text  # an exit leads nowhere


def test_the_svg_is_self_contained_and_names_every_step_with_its_counts(make_runtime, store, tmp_path):
    rt = make_runtime({"j": JOURNEY})
    for i in range(3):
        add_event(store, subscriber(store, f"c{i}@example.com"), "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    with store.reading() as conn:
        counts = step_counts(conn, "j")
    assert counts["hello"] == "3 sent" and counts["wait_buy"] == "3 here now"
    svg = to_svg(build_graph(rt.plan("j"), counts))
    assert svg.startswith("<svg") and "<script" not in svg and "http" not in svg.replace(
        "http://www.w3.org/2000/svg", "")
    for sid in ("hello", "wait_buy", "thanks", "ab", "nudge_a", "nudge_b", "vip", "bye"):
        assert f">{sid}</text>" in svg
    assert ">3 sent</text>" in svg and ">3 here now</text>" in svg


def test_nurture_graph_writes_the_svg_and_prints_mermaid(tmp_path):
    root = write_project(tmp_path / "shop", {"j": JOURNEY})
    out = nurture(root, "graph", "j", "--svg", str(tmp_path / "j.svg"), "--mermaid", check=True)
    assert out.stdout.startswith("flowchart TD") and (tmp_path / "j.svg").read_text().startswith("<svg")
    assert nurture(root, "graph", "nope").returncode != 0


# ---------------------------------------------------------------- counts (SQLite only: cheap)

LATE = journey_yaml("late", """
- id: greet
  send: {channel: email, template: hello, subject: Hi}
""", trigger="{event: night_signup}")


@pytest.fixture
def lite(tmp_path):
    """A runtime over a fresh SQLite file and a project of JOURNEY (`j`) and LATE."""
    store = open_store(f"sqlite:///{tmp_path / 'graph.db'}")
    spec = load_project(write_project(tmp_path / "shop", {"j": JOURNEY, "late": LATE}))
    assert not spec.errors, [str(e) for e in spec.errors]
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(tmp_path / "shop" / ".nurture")})
    yield rt
    rt.close()
    store.dispose()


def _world(rt) -> dict[str, int]:
    """Four signups to `j` (one without consent), one of them buys; three days later the other
    three time out into the split. Two others sign up to `late` at 22:00, inside e-mail quiet hours."""
    store = rt.store
    ids = {f"c{i}": subscriber(store, f"c{i}@example.com") for i in range(3)}
    ids["c3"] = add_contact(store, "c3@example.com")  # no consent: suppressed at every send
    for cid in ids.values():
        add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    add_event(store, ids["c0"], "purchase", T0 + timedelta(hours=1))
    run_tick(rt, "j", T0 + timedelta(hours=2))
    run_tick(rt, "j", T0 + timedelta(days=3, hours=1))
    run_tick(rt, "j", T0 + timedelta(days=3, hours=2))
    night = utc(2026, 3, 4, 22)
    for name in ("n0", "n1"):
        ids[name] = subscriber(store, f"{name}@example.com")
        add_event(store, ids[name], "night_signup", night)
    run_tick(rt, "late", night + timedelta(minutes=1))  # both deferred to 08:00
    return ids


def test_counts_per_node_are_the_message_logs_outcomes_and_the_enrollments_where_they_are(lite):
    ids = _world(lite)
    with lite.store.reading() as conn:
        j = journey_counts(conn, "j", lite.plan("j"))
        late = journey_counts(conn, "late", lite.plan("late"))
    assert (j.entered, j.holdout, j.completed) == (4, 0, 2)  # c0 via thanks, and one through nudge_a
    assert j.outcomes == {"hello": {"sent": 3, "suppressed": 1}, "thanks": {"sent": 1}, "nudge_a": {"sent": 1}}
    assert j.here == {"nudge_b": 2}
    # the arms: the stable hash of the three contacts that timed out (c3 included: intention to treat)
    expected = {"a": 0, "b": 0}
    for name in ("c1", "c2", "c3"):
        expected[pick_arm("j", "ab", ids[name], lite.plan("j").nodes["ab"].arms)[0]] += 1
    assert j.arms == {("ab", "a"): expected["a"], ("ab", "b"): expected["b"]} and sum(expected.values()) == 3
    assert (late.entered, late.outcomes, late.here) == (2, {"greet": {"deferred": 2}}, {"greet": 2})
    assert j.labels() == {START: "4 entered", END: "2 completed", "hello": "3 sent, 1 suppressed",
                          "thanks": "1 sent", "nudge_a": "1 sent", "nudge_b": "2 here now"}
    assert late.labels()["greet"] == "2 deferred, 2 here now"

    run_tick(lite, "late", utc(2026, 3, 5, 8, 1))  # the window opens: sent, the deferrals stay on record
    with lite.store.reading() as conn:
        assert step_counts(conn, "late") == {START: "2 entered", END: "2 completed", "greet": "2 sent, 2 deferred"}


def test_the_diagram_carries_the_counts_on_its_nodes_and_split_arms(lite):
    _world(lite)
    with lite.store.reading() as conn:
        graph = journey_graph(conn, lite.plan("j"))
    arms = {e.label: e.count for e in graph.edges if e.source == "ab"}
    assert sorted(arms) == ["a", "b"] and sum(int(n) for n in arms.values()) == 3
    text = to_mermaid(graph)
    assert 'journey_start(["start<br/>on event signup<br/>4 entered"])' in text
    assert 's_hello["hello<br/>send email: hello<br/>3 sent, 1 suppressed"]' in text
    assert f's_ab -->|"a · {arms["a"]}"| s_nudge_a' in text
    svg = to_svg(graph)
    ET.fromstring(svg)  # well-formed
    assert ">3 sent, 1 suppressed</text>" in svg and ">2 here now</text>" in svg and ">4 entered</text>" in svg
    assert f"> · {arms['b']}</tspan>" in svg


def test_a_step_called_end_or_start_is_a_step_not_the_journeys_end(tmp_path):
    plan_yaml = journey_yaml("t", """
    - id: start
      wait: 1h
    - id: end
      send: {channel: email, template: hello, subject: Bye}
    """)
    spec = load_project(write_project(tmp_path / "p", {"t": plan_yaml}))
    graph = build_graph(compile_journey(spec.journeys["t"]))
    assert graph.edges == [Edge(START, "start"), Edge("start", "end"), Edge("end", END)]
    text = to_mermaid(graph)
    assert "journey_start --> s_start" in text and "s_end --> journey_end" in text
    svg = to_svg(graph)
    assert svg.count(">start</text>") == 2 and svg.count(">end</text>") == 2  # the node and the step


def test_user_text_in_the_svg_is_escaped_and_the_svg_stays_well_formed():
    hostile = '<script>alert("x")</script>&'
    graph = Graph(hostile, nodes={START: "on event a<b", "s": f"send email: {hostile}", END: "end"},
                  kinds={START: "start", "s": "send", END: "end"},
                  edges=[Edge(START, "s", hostile, "3"), Edge("s", END)], counts={"s": "1 sent"})
    svg = to_svg(graph, ident='x" onload="y')
    assert "<script" not in svg and 'onload="y"' not in svg
    root = ET.fromstring(svg)
    texts = "".join(root.itertext())
    assert hostile in texts and "on event a<b" in texts


def test_the_html_report_draws_each_journeys_diagram_in_its_section(lite):
    _world(lite)
    report = build_report(lite.store, lite.project, utc(2026, 3, 8))
    page = render_html(report, graphs=journey_graphs(lite.store, lite.project, ["j", "late"]))
    sections = {m.group(1): m.group(0) for m in re.finditer(r'<section class="card" id="journey-(\w+)">.*?</section>',
                                                            page, re.S)}
    assert sorted(sections) == ["j", "late"]
    for name, steps in (("j", ("hello", "wait_buy", "thanks", "ab", "nudge_a", "nudge_b", "vip", "bye")),
                        ("late", ("greet",))):
        section = sections[name]
        assert section.count("<h3>Journey map</h3>") == 1 and section.count("<svg") >= 1
        svg = re.search(r'<div class="graph">(<svg.*?</svg>)</div>', section, re.S).group(1)
        ET.fromstring(svg)
        for sid in steps:
            assert f">{sid}</text>" in svg, (name, sid)
    assert ">3 sent, 1 suppressed</text>" in sections["j"] and ">2 deferred, 2 here now</text>" in sections["late"]
    markers = re.findall(r'<marker id="([^"]+)"', page)
    assert len(markers) == len(set(markers)) == 2  # one arrow per diagram, ids unique on the page
    outside = re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    assert "<script" not in page and "http" not in outside.replace("http://www.w3.org", "")
    # without diagrams, the page is as before
    assert "Journey map" not in render_html(report)
