"""Specification: hostile or broken files (an alias bomb, nesting 1,000 levels deep, a NUL byte,
a template name that climbs out of templates/) are answered like any other mistake — a located
`path:line:col: message` per problem, every other file's errors still reported in the same
run, quickly, and never a traceback or an "internal error" from `nurture validate` or `run`."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from nurture.spec.project import load_project
from nurture.spec.yaml_loader import load_located
from tests.engine_fixtures import journey_yaml

LOCATED = re.compile(r"^[^:]+:\d+:\d+: .+")
SEND = "- id: hello\n  send: {channel: email, template: hello, subject: Hi}"
TYPO = "name: typo\ntrigger: {event: signup}\nexit_whn: []\nsteps:\n  - {id: a, wait: 1h}\n"
TYPO_ERROR = "journeys/typo.yaml:3:1: unknown key 'exit_whn' (did you mean 'exit_when'?)"


# ---------------------------------------------------------------- fixture helpers


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite for minutes) when the block runs too long."""
    def _expired(signum, frame):
        pytest.fail(f"still busy after {seconds}s")
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Nine anchors, each a list of nine aliases of the one before: ~500 bytes, 9**9 values."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(kind: str, depth: int, leaf: str = "{event: purchase}") -> str:
    """A flow-style condition `depth` levels deep: {not: {not: …}} or {all: [{all: [ … ]}]}."""
    if kind == "not":
        return "{not: " * depth + leaf + "}" * depth
    return f"{{{kind}: [" * depth + leaf + "]}" * depth


def errors_of(root: Path) -> list[str]:
    with deadline(20):
        spec = load_project(root)
    rendered = [str(e) for e in spec.errors]
    assert rendered and all(LOCATED.match(e) for e in rendered), rendered
    return rendered


def only_error_in(errors: list[str], file: str) -> str:
    mine = [e for e in errors if e.startswith(file + ":")]
    assert len(mine) == 1, errors
    return mine[0]


# ---------------------------------------------------------------- item 5: alias bombs


def test_a_billion_laughs_journey_is_refused_at_an_alias_in_well_under_a_second(make_project):
    bomb = billion_laughs()
    assert len(bomb) < 600
    started = time.perf_counter()
    with deadline(10):
        _, _, errors = load_located(bomb, "journeys/bomb.yaml")
    assert time.perf_counter() - started < 0.5
    assert [str(e) for e in errors] == [
        "journeys/bomb.yaml:5:10: aliases expand this file to more than 10,000 values (*l3 is one too many): "
        "write the values out instead"]


def test_a_billion_laughs_journey_does_not_hide_the_other_files_errors(make_project):
    journey = "name: bomb\ntrigger: {event: signup}\n" + billion_laughs() + "steps:\n  - {id: a, wait: 1h}\n"
    errors = errors_of(make_project({"bomb": journey, "typo": TYPO}))
    assert "aliases expand this file to more than 10,000 values" in only_error_in(errors, "journeys/bomb.yaml")
    assert TYPO_ERROR in errors


@pytest.mark.parametrize("file", ["policies", "segments", "scoring"])
def test_every_yaml_file_of_a_project_refuses_an_alias_bomb(make_project, file):
    root = make_project({"typo": TYPO})
    (root / "journeys" / f"{file}.yaml").write_text(billion_laughs(), encoding="utf-8")
    errors = errors_of(root)
    assert re.match(rf"journeys/{file}.yaml:5:10: aliases expand this file to more than 10,000 values",
                    only_error_in(errors, f"journeys/{file}.yaml"))
    assert TYPO_ERROR in errors


def test_an_alias_used_inside_its_own_anchor_is_a_located_error(make_project):
    journey = journey_yaml("loop", SEND, extra="exit_when: &loop [{all: *loop}]")
    errors = errors_of(make_project({"loop": journey}))
    assert errors == ["journeys/loop.yaml:3:25: alias *loop is used inside the value it names (a loop)"]


def test_aliases_that_nest_too_deep_together_are_a_located_error(make_project):
    # Each anchor is shallow, but every alias puts the previous one another 30 levels down.
    deep = "[" * 30 + "1" + "]" * 30
    text = f"a0: &a0 {deep}\na1: &a1 {deep.replace('1', '*a0', 1)}\na2: &a2 {deep.replace('1', '*a1', 1)}\n"
    _, _, errors = load_located(text, "x.yaml")
    assert [str(e) for e in errors] == ["x.yaml:3:39: alias *a1 nests values deeper than 64 levels"]


def test_anchors_aliases_and_merge_keys_within_the_limits_still_work(make_project):
    steps = """
    - id: hello
      send: &mail {channel: email, template: hello, subject: Hi}
    - id: again
      send: *mail
    - id: other
      send: {<<: *mail, template: other}
    """
    spec = load_project(make_project({"j": journey_yaml("j", steps)}))
    assert spec.errors == []
    assert [s.send.template for s in spec.journeys["j"].steps] == ["hello", "hello", "other"]


# ---------------------------------------------------------------- item 7: depth, NUL, other YAML errors


@pytest.mark.parametrize("kind", ["not", "all", "any"])
def test_a_condition_nested_1000_deep_is_a_located_error_and_other_files_still_report(make_project, kind):
    journey = journey_yaml("deep", SEND, extra=f"exit_when:\n  - {nested(kind, 1000)}")
    segments = f"segments:\n  - name: vip\n    when: {nested(kind, 1000, '{score: 50}')}\n"
    errors = errors_of(make_project({"deep": journey, "typo": TYPO}, segments=segments))
    assert re.match(r"journeys/deep\.yaml:4:\d+: nesting deeper than 64 levels: flatten this part of the file$",
                    only_error_in(errors, "journeys/deep.yaml"))
    assert re.match(r"journeys/segments\.yaml:3:\d+: nesting deeper than 64 levels",
                    only_error_in(errors, "journeys/segments.yaml"))
    assert TYPO_ERROR in errors


def test_a_condition_deeper_than_the_database_can_evaluate_is_refused_by_validate(make_project):
    # 40 levels is fine for YAML, but SQLite's parser overflows near 27 nested `not`s: such a
    # journey would validate and then fail every tick.
    journey = journey_yaml("deep", SEND, extra=f"exit_when:\n  - {nested('not', 40)}")
    errors = errors_of(make_project({"deep": journey}))
    assert len(errors) == 1
    assert re.match(r"journeys/deep\.yaml:4:\d+: all/any/not nested more than 16 levels deep: simplify this condition$",
                    errors[0]), errors


def test_infinite_and_nan_numbers_and_endless_durations_are_located_errors(make_project):
    """`.inf` and `.nan` are floats to YAML, and passed validate in a condition or an update:
    then every tick of the journey failed (JSON refuses them). `wait: 99999999w` passed too and
    every tick failed on a due time past the year 9999; `200000000w` made validate itself end
    with an "internal error". Each is now the located error of its place."""
    journey = """name: odd
trigger: {event: signup, where: {property: {v: {gte: .nan}}}}
exit_when:
  - {attribute: {x: {in: [1, .inf]}}}
reentry: 99999999999999999999999w
steps:
  - {id: a, wait: 99999999w}
  - {id: b, wait: 200000000w}
  - {id: c, update: {attributes: {x: .inf, y: -.inf, z: 1.5}}}
  - {id: d, wait: 5200w}
  - {id: e, split: [{name: x, weight: .inf}, {name: y, weight: 1}]}
"""
    errors = errors_of(make_project({"odd": journey, "typo": TYPO}))
    assert sorted(e for e in errors if e.startswith("journeys/odd.yaml")) == sorted([
        "journeys/odd.yaml:2:54: nan is not a finite number: .inf and .nan cannot be compared or stored",
        "journeys/odd.yaml:4:30: inf is not a finite number: .inf and .nan cannot be compared or stored",
        "journeys/odd.yaml:5:10: '99999999999999999999999w' is longer than 100 years",
        "journeys/odd.yaml:7:19: '99999999w' is longer than 100 years",
        "journeys/odd.yaml:8:19: '200000000w' is longer than 100 years",
        "journeys/odd.yaml:9:38: inf is not a finite number: .inf and .nan cannot be compared or stored",
        "journeys/odd.yaml:9:47: -inf is not a finite number: .inf and .nan cannot be compared or stored",
        "journeys/odd.yaml:11:39: Input should be a finite number"]), errors
    assert TYPO_ERROR in errors


def test_the_deepest_condition_validate_accepts_runs_on_sqlite(make_project, sqlite_url):
    from nurture.conditions import ConditionScope, compile_condition
    from nurture.store.tables import contact_t
    from nurture.store.db import open_store
    journey = journey_yaml("deep", SEND, extra=f"exit_when:\n  - {nested('not', 16, '{event: x, where: {a: 1}}')}")
    spec = load_project(make_project({"deep": journey}))
    assert spec.errors == []
    expr = compile_condition(spec.journeys["deep"].exit_when[0], ConditionScope(datetime.now(timezone.utc)))
    store = open_store(sqlite_url)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(select(contact_t.c.id).where(expr)).fetchall() == []
    finally:
        store.dispose()


def test_a_nul_byte_is_a_located_error_and_other_files_still_report(make_project):
    root = make_project({"typo": TYPO})
    (root / "journeys" / "nul.yaml").write_text("name: nul\ntrigger: {event: si\x00gnup}\n", encoding="utf-8")
    errors = errors_of(root)
    assert only_error_in(errors, "journeys/nul.yaml") == \
        "journeys/nul.yaml:2:20: the file contains a NUL byte (binary data?): save it as plain UTF-8 text"
    assert TYPO_ERROR in errors


@pytest.mark.parametrize("text, expected", [
    ("name: j\ndescription: \x07\n", "j.yaml:2:14: the file contains the character U+0007, which YAML does not allow"),
    ("name: j\ndescription: 2024-02-30\n", "j.yaml:2:14: cannot read the value '2024-02-30': day is out of range for month"),
    ("name: j\nholdout: " + "9" * 5000 + "\n",
     "j.yaml:2:10: cannot read the value '" + "9" * 40 + "…': "
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"),
    ("name: j\nsteps: *nowhere\n", "j.yaml:2:8: YAML syntax error: an alias (*name) without an anchor (&name) "
                                  "before it [found undefined alias 'nowhere']"),
    ("name: j\ndescription: \"unclosed\n", "j.yaml:3:1: YAML syntax error: a quote is never closed: add the closing "
                                         "' or \" [found unexpected end of stream]"),
    ("name: j\n\tsteps: []\n", "j.yaml:2:1: YAML syntax error: a tab character: YAML indents with spaces only "
                              "[found character '\\t' that cannot start any token]"),
    ("name: j\n---\nname: k\n", "j.yaml:2:1: YAML syntax error: but found another document"),
    ("? [a, b]\n: 1\n", "j.yaml:1:3: YAML syntax error: a key must be a plain value"),
], ids=["control-character", "impossible-date", "huge-integer", "undefined-alias", "unclosed-quote", "tab",
        "two-documents", "list-as-key"])
def test_other_unreadable_yaml_stays_one_located_error(text, expected):
    with deadline(10):
        data, _, errors = load_located(text, "j.yaml")
    assert data is None
    assert [str(e) for e in errors] == [expected]


# ---------------------------------------------------------------- item 13: template names


@pytest.mark.parametrize("channel, absolute", [("email", "/etc/passwd"), ("email", "OUTSIDE"), ("sms", "OUTSIDE")])
def test_an_absolute_template_path_in_a_journey_is_located_there(make_project, tmp_path, channel, absolute):
    outside = tmp_path / "outside"  # a file that exists: today it ends in an internal error
    (tmp_path / "outside.html").write_text("<p>not a template of this project</p>", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("not a template of this project", encoding="utf-8")
    name = str(outside) if absolute == "OUTSIDE" else absolute
    subject = ", subject: Hi" if channel == "email" else ""
    journey = journey_yaml("j", f"- id: s\n  send: {{channel: {channel}, template: {name}{subject}}}")
    errors = errors_of(make_project({"j": journey}))
    col = 38 if channel == "email" else 36
    assert errors == [f"journeys/j.yaml:5:{col}: template '{name}' is an absolute path: name it relative to "
                      f"templates/{channel}/, e.g. 'welcome/hello'"]


def test_a_template_name_climbing_out_of_templates_is_located_in_the_journey(make_project):
    journey = journey_yaml("j", "- id: s\n  send: {channel: sms, template: ../../etc/hosts}")
    errors = errors_of(make_project({"j": journey}))
    assert errors == ["journeys/j.yaml:5:36: template '../../etc/hosts' points outside the templates/ folder "
                      "('..' is not allowed in a template name)"]


@pytest.mark.parametrize("tag", ['{% include "../x.html" %}', '{% extends "../../x.html" %}',
                                 '{% import "../x.html" as x %}', '{% from "../x.html" import m %}',
                                 '{% include ["../x.html", "email/other.html"] ignore missing %}'])
def test_a_template_loading_a_file_outside_templates_is_located_in_that_template(make_project, tag):
    name = re.search(r'"([^"]+)"', tag).group(1)
    templates = {"email/bad.html": f"<p>Hi</p>\n{tag}\n"}
    journey = journey_yaml("j", "- id: s\n  send: {channel: email, template: bad, subject: x}")
    errors = errors_of(make_project({"j": journey}, templates=templates))
    assert errors == [f"templates/email/bad.html:2:1: template '{name}' points outside the templates/ folder "
                      "('..' is not allowed in a template name)"]


def test_a_text_part_including_outside_templates_is_located_in_the_text_part(make_project):
    templates = {"email/hello.txt": 'Hi\n\n{% include "../secrets.txt" %}\n'}
    errors = errors_of(make_project({"j": journey_yaml("j", SEND)}, templates=templates))
    assert errors == ["templates/email/hello.txt:3:1: template '../secrets.txt' points outside the templates/ "
                      "folder ('..' is not allowed in a template name)"]


def test_a_subject_including_outside_templates_is_located_in_the_journey(make_project):
    journey = journey_yaml("j", "- id: s\n  send: {channel: email, template: hello, subject: '{% include \"../x\" %}'}")
    errors = errors_of(make_project({"j": journey}))
    assert errors == ["journeys/j.yaml:5:54: template '../x' points outside the templates/ folder "
                      "('..' is not allowed in a template name)"]


def test_a_missing_or_broken_included_template_is_found_by_validate_not_by_every_render(make_project):
    templates = {
        "email/page.html": '{% extends "layouts/bsae.html" %}\n',
        "email/card.html": '<p>Hi</p>\n{% include "partials/footer.html" %}\n',
        "partials/footer.html": "<p>{{ contact.first_name }</p>\n",
        "layouts/base.html": "<html><body>{% block body %}{% endblock %}</body></html>",
    }
    steps = ("- id: a\n  send: {channel: email, template: page, subject: x}\n"
             "- id: b\n  send: {channel: email, template: card, subject: x}")
    errors = errors_of(make_project({"j": journey_yaml("j", steps)}, templates=templates))
    assert errors == [
        "templates/email/page.html:1:1: template 'layouts/bsae.html' not found: expected templates/layouts/bsae.html "
        "(did you mean 'layouts/base.html'?)",
        "templates/partials/footer.html:1:1: template syntax error: unexpected '}'",
    ]


def test_layouts_partials_and_optional_includes_inside_templates_still_validate_and_render(make_project):
    templates = {
        "layouts/base.html": "<html><body>{% block body %}{% endblock %}{% include 'partials/footer.html' %}</body></html>",
        "partials/footer.html": "<p>Bye {{ contact.first_name }}</p>",
        "email/page.html": '{% extends "layouts/base.html" %}{% block body %}<p>Hi</p>'
                           '{% include "partials/none.html" ignore missing %}{% endblock %}',
    }
    root = make_project({"j": journey_yaml("j", "- id: s\n  send: {channel: email, template: page, subject: x}")},
                        templates=templates)
    spec = load_project(root)
    assert spec.errors == []
    rendered = spec.templates.render_email("page", "Hello", {"contact": {"first_name": "Ada"}})
    assert "<p>Hi</p>" in rendered.html and "Bye Ada" in rendered.html


@pytest.mark.parametrize("load", [lambda lib: lib.email("../../x"), lambda lib: lib.sms("/etc/passwd"),
                                  lambda lib: lib.prepare_email("../hello", "Hi")])
def test_loading_a_template_name_outside_templates_is_a_clear_render_error(make_project, load):
    from nurture.rendering.templates import RenderError, TemplateLibrary, TemplateNameError
    library = TemplateLibrary(make_project({}) / "templates")
    with pytest.raises(TemplateNameError) as raised:
        load(library)
    assert isinstance(raised.value, RenderError)
    assert re.search(r"is an absolute path|points outside the templates/ folder", str(raised.value))


def test_a_computed_include_outside_templates_fails_its_render_with_a_clear_error(make_project):
    from nurture.rendering.templates import TemplateLibrary, TemplateNameError
    templates = {"email/dyn.html": "<p>Hi</p>{% include contact.partial %}"}
    library = TemplateLibrary(make_project({}, templates=templates) / "templates")
    with pytest.raises(TemplateNameError, match=r"template '\.\./x' points outside the templates/ folder"):
        library.render_email("dyn", "Hi", {"contact": {"partial": "../x"}})


# ---------------------------------------------------------------- through the real command line


def nurture(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "NURTURE_PROJECT": str(root), "COLUMNS": "200",
           "NURTURE_DATABASE_URL": f"sqlite:///{root / '.nurture' / 'cli.db'}", "NURTURE_DATA_DIR": str(root / ".nurture")}
    env.pop("NURTURE_DEBUG", None)
    started = time.perf_counter()
    from tests.cli_inproc import run_cli
    proc = run_cli(list(args), env, timeout=120)
    return proc, time.perf_counter() - started


@pytest.mark.xdist_group("prefect")
def test_validate_and_run_answer_every_hostile_file_in_one_run_without_a_traceback(make_project, tmp_path,
                                                                                   prefect_api):
    (tmp_path / "outside.html").write_text("<p>x</p>", encoding="utf-8")
    journeys = {
        "bomb": "name: bomb\ntrigger: {event: signup}\n" + billion_laughs() + "steps:\n  - {id: a, wait: 1h}\n",
        "deep": journey_yaml("deep", SEND, extra=f"exit_when:\n  - {nested('not', 1000)}"),
        "absolute": journey_yaml("absolute", f"- id: s\n  send: {{channel: email, template: {tmp_path / 'outside'}, subject: x}}"),
        "climbs": journey_yaml("climbs", "- id: s\n  send: {channel: email, template: climbs, subject: x}"),
        "typo": TYPO,
    }
    root = make_project(journeys, templates={"email/climbs.html": '<p>Hi</p>\n{% include "../../x" %}\n'})
    (root / "journeys" / "nul.yaml").write_bytes(b"name: nul\x00\n")
    for verb in ("validate", "run"):
        proc, took = nurture(root, verb)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1, output
        assert "Traceback" not in output and "internal error" not in output, output
        assert took < 60, took
        for located in ("journeys/bomb.yaml:", "journeys/deep.yaml:", "journeys/absolute.yaml:5:38:",
                        "templates/email/climbs.html:2:1:", "journeys/nul.yaml:1:10:", TYPO_ERROR):
            assert located in output, (verb, output)
