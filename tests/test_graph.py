"""Specification: `nurture graph` draws a journey — every step, every path (next, then/else,
then/timeout, split arms) — as Mermaid text and as one self-contained SVG whose text names every
step id, with messages sent and contacts waiting per step from the store."""
from __future__ import annotations

import re
from datetime import timedelta

from nurture.compiler import compile_journey
from nurture.graph import build_graph, step_counts, to_mermaid, to_svg
from nurture.runtime import run_tick
from nurture.spec.project import load_project
from tests.conftest import utc, write_project
from tests.engine_fixtures import _empty_databases, db_url  # noqa: F401  (empty databases in milliseconds)
from tests.engine_fixtures import add_event, journey_yaml, subscriber
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
          - {name: a, weight: 1, steps: [{id: nudge_a, send: {channel: email, template: hello, subject: A}}]}
          - {name: b, weight: 1, steps: [{id: nudge_b, wait: 1d}]}
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
    for sid in ("hello", "wait_buy", "thanks", "ab", "nudge_a", "nudge_b", "vip", "bye", "end"):
        assert re.search(rf"^    s_{sid}[\[\(\{{]", text, re.M), sid
    for edge in ("s_hello --> s_wait_buy", "s_wait_buy -->|then| s_thanks", "s_wait_buy -->|timeout| s_ab",
                 "s_ab -->|a| s_nudge_a", "s_ab -->|b| s_nudge_b", "s_vip -->|then| s_bye", "s_vip -->|else| s_end"):
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
