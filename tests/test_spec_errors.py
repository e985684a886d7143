"""Specification: `nurture validate` answers invalid YAML with every error of the run, each as
`path:line:col: message`, with a did-you-mean hint for near-miss keys and names; built-in
policies apply when journeys/policies.yaml is absent."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from nurture.spec.models import Policies
from nurture.spec.project import load_project
from tests.engine_fixtures import journey_yaml

LOCATED = re.compile(r"^[^:]+:\d+:\d+: .+")


def errors_of(make_project, journeys, **kwargs) -> list[str]:
    spec = load_project(make_project(journeys, **kwargs))
    rendered = [str(e) for e in spec.errors]
    assert all(LOCATED.match(e) for e in rendered), rendered
    return rendered


SEND = "- id: hello\n  send: {channel: email, template: hello, subject: Hi}"


def test_a_valid_project_has_no_errors(make_project):
    assert errors_of(make_project, {"welcome": journey_yaml("welcome", SEND)}) == []


@pytest.mark.parametrize("yaml_text, expected", [
    # near-miss key at the top level
    ("name: j\ntrigger: {event: signup}\nexit_whn:\n  - event: purchase\nsteps:\n  - {id: a, wait: 1h}\n",
     "journeys/j.yaml:3:1: unknown key 'exit_whn' (did you mean 'exit_when'?)"),
    # near-miss step kind
    ("name: j\ntrigger: {event: signup}\nsteps:\n  - id: a\n    wiat: 1h\n",
     "journeys/j.yaml:5:5: unknown key 'wiat' (did you mean 'wait'?)"),
    # near-miss channel name, located at the value
    ("name: j\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send: {channel: emial, template: hello, subject: x}\n",
     "journeys/j.yaml:5:21: 'emial' is not allowed here: expected 'email', 'sms' or 'whatsapp' (did you mean 'email'?)"),
    # near-miss key inside a nested model (trigger)
    ("name: j\ntrigger: {event: signup, wehre: {score: 1}}\nsteps:\n  - {id: a, wait: 1h}\n",
     "journeys/j.yaml:2:26: unknown key 'wehre' (did you mean 'where'?)"),
    # YAML syntax error, located where the parser gave up
    ("name: j\ntrigger: {event: signup\nsteps: []\n",
     "journeys/j.yaml:3:6: YAML syntax error: a { … } mapping is not closed with '}' or its entries are not "
     "separated by commas; quote a value that contains { } [ ] , : ? or # (e.g. \"Still thinking?\") "
     "[expected ',' or '}', but got ':']"),
    # duplicate key
    ("name: j\nname: j\ntrigger: {event: signup}\nsteps:\n  - {id: a, wait: 1h}\n",
     "journeys/j.yaml:2:1: duplicate key 'name'"),
    # name must equal the file stem
    ("name: other\ntrigger: {event: signup}\nsteps:\n  - {id: a, wait: 1h}\n",
     "journeys/j.yaml:1:7: name 'other' must equal the file name 'j'"),
    # a bad duration names the format
    ("name: j\ntrigger: {event: signup}\nsteps:\n  - {id: a, wait: 1x}\n",
     "journeys/j.yaml:4:19: '1x' is not a duration: write e.g. 30m, 2h, 3d or 1w"),
    # missing required key
    ("name: j\nsteps:\n  - {id: a, wait: 1h}\n",
     "journeys/j.yaml:1:1: missing required key 'trigger'"),
])
def test_journey_error_is_reported_at_its_line_and_column(make_project, yaml_text, expected):
    assert expected in errors_of(make_project, {"j": yaml_text})


def test_a_schema_error_or_a_duplicate_key_hides_no_other_error_of_the_file(make_project):
    """A subject's Jinja syntax error was reported only once the file's schema errors were
    fixed, and a duplicate key hid everything else (a step id used twice): one run, all."""
    broken = ("name: j\ntrigger: {event: signup}\nsteps:\n"
              "  - {id: a, wait: 1h, send: {channel: email, template: hello, subject: x}}\n"
              "  - {id: b, send: {channel: email, template: hello, subject: '{{ contact.first_name '}}\n")
    twice = "name: k\ntrigger: {event: signup}\ntrigger: {event: purchase}\nsteps:\n  - {id: a, wait: 1h}\n  - {id: a, wait: 2h}\n"
    root = make_project({"j": broken, "k": twice})
    spec = load_project(root)
    errors = [str(e) for e in spec.errors]
    assert errors[0].startswith("journeys/j.yaml:4:5: a step has exactly one of:")
    assert errors[1].startswith("journeys/j.yaml:5:62: template syntax error:")
    assert errors[2:] == ["journeys/k.yaml:3:1: duplicate key 'trigger'",
                          "journeys/k.yaml:6:10: step id 'a' is used twice (ids must be unique)"]
    assert "k" not in spec.journeys  # a file with a duplicate key does not load, whatever the rest says


def test_cross_references_are_checked_with_suggestions(make_project):
    steps = """
    - id: one
      send: {channel: email, template: helo, subject: x}
    - id: two
      branch:
        when: {segment: vipp}
        then: [{id: one, wait: 1h}]
    - id: three
      send: {channel: sms, template: hello}
    """
    errors = errors_of(make_project, {"j": journey_yaml("j", steps)},
                       segments="segments:\n  - name: vip\n    when: {score: {gte: 50}}\n")
    assert errors == [
        "journeys/j.yaml:5:38: template 'helo' not found: expected templates/email/helo.html (did you mean 'hello'?)",
        "journeys/j.yaml:8:23: unknown segment 'vipp' (did you mean 'vip'?)",
        "journeys/j.yaml:9:19: step id 'one' is used twice (ids must be unique)",
    ]


def test_every_error_of_every_file_is_reported_in_one_run(make_project):
    journeys = {
        "a": "name: a\ntrigger: {event: signup}\nexit_whn: []\nsteps:\n  - {id: x, wait: 1h}\n",
        "b": "name: b\ntrigger: {event: signup\n",
        "c": journey_yaml("c", "- id: s\n  send: {channel: email, template: nope, subject: x}"),
    }
    errors = errors_of(make_project, journeys, policies="on_cap: defr\n")
    files = sorted({e.split(":")[0] for e in errors})
    assert files == ["journeys/a.yaml", "journeys/b.yaml", "journeys/c.yaml", "journeys/policies.yaml"]


def test_a_jinja_syntax_error_is_located_in_the_template_file(make_project):
    templates = {"email/broken.html": "<p>Hi</p>\n<p>{{ contact.first_name }</p>\n<p>bye</p>\n"}
    journey = journey_yaml("j", "- id: s\n  send: {channel: email, template: broken, subject: x}")
    errors = errors_of(make_project, {"j": journey}, templates=templates)
    assert errors == ["templates/email/broken.html:2:1: template syntax error: unexpected '}'"]


def test_a_jinja_syntax_error_in_a_styled_document_keeps_its_line(make_project):
    # CSS inlining rewrites the document; the error must still point at the line the marketer wrote.
    source = ("<html>\n<head>\n<style>p {color: red}</style>\n</head>\n<body>\n<p>ok</p>\n"
              "<p>{{ contact.first_name }</p>\n</body>\n</html>\n")
    journey = journey_yaml("j", "- id: s\n  send: {channel: email, template: doc, subject: x}")
    errors = errors_of(make_project, {"j": journey}, templates={"email/doc.html": source})
    assert errors == ["templates/email/doc.html:7:1: template syntax error: unexpected '}'"]


def test_a_jinja_syntax_error_in_a_subject_is_located_in_the_journey(make_project):
    journey = journey_yaml("j", '- id: s\n  send: {channel: email, template: hello, subject: "{{ x "}')
    errors = errors_of(make_project, {"j": journey})
    assert len(errors) == 1 and errors[0].startswith("journeys/j.yaml:5:")
    assert "template syntax error" in errors[0]


def test_a_journey_frequency_cap_may_not_loosen_the_policy(make_project):
    journey = journey_yaml("j", SEND, extra="frequency_cap: [{channel: email, max: 5, per: 7d}]")
    errors = errors_of(make_project, {"j": journey})
    assert len(errors) == 1
    assert errors == ["journeys/j.yaml:3:39: frequency_cap may only tighten policies.yaml (email: at most 3 per 1w)"]
    tighter = journey_yaml("j", SEND, extra="frequency_cap: [{channel: email, max: 1, per: 7d}]")
    assert errors_of(make_project, {"j": tighter}) == []


def test_policies_errors_are_located_with_suggestions(make_project):
    policies = ("timezone: Europe/Berln\non_cap: defr\nquiet_hour: {}\n"
                "frequency_caps: [{channel: email, max: -1, per: 7d}]\n"
                "double_opt_in: {emial: [marketing]}\n")
    errors = errors_of(make_project, {"j": journey_yaml("j", SEND)}, policies=policies)
    assert errors == [
        "journeys/policies.yaml:1:11: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
        "journeys/policies.yaml:2:9: 'defr' is not allowed here: expected 'defer' or 'skip' (did you mean 'defer'?)",
        "journeys/policies.yaml:3:1: unknown key 'quiet_hour' (did you mean 'quiet_hours'?)",
        "journeys/policies.yaml:4:40: Input should be greater than or equal to 0",
        # the channel key is reported at its value
        "journeys/policies.yaml:5:24: 'emial' is not allowed here: expected 'email', 'sms' or 'whatsapp' (did you mean 'email'?)",
    ]


def test_quiet_hours_need_a_time_of_day(make_project):
    errors = errors_of(make_project, {"j": journey_yaml("j", SEND)},
                       policies='quiet_hours:\n  email: {start: "25:00", end: "08:00"}\n')
    assert errors == ["journeys/policies.yaml:2:18: '25:00' is not a time of day: write it as \"HH:MM\", e.g. \"08:00\""]


def test_quiet_hours_that_leave_no_time_to_send_are_refused_at_their_line(make_project):
    """00:00–23:59 left one minute a day: a message deferred to 23:59 met the next tick at 00:00,
    inside quiet hours again, and waited for ever. Equal start and end still mean none."""
    errors = errors_of(make_project, {"j": journey_yaml("j", SEND, extra='quiet_hours: {start: "00:00", end: "23:59"}')})
    assert len(errors) == 1 and errors[0].startswith("journeys/j.yaml:3:") and \
        "quiet hours 00:00–23:59 leave 1 minute(s) a day to send in; leave at least 15" in errors[0]
    assert errors_of(make_project, {"j": journey_yaml("j", SEND)},
                     policies='quiet_hours:\n  email: {start: "08:00", end: "08:00"}\n') == []


def test_built_in_policies_apply_when_policies_yaml_is_absent(make_project):
    spec = load_project(make_project({"j": journey_yaml("j", SEND)}, policies=None))
    assert spec.errors == []
    assert spec.policies == Policies()
    assert spec.policies.timezone == "UTC"
    assert spec.policies.on_cap == "defer"
    assert (spec.policies.quiet_hours["email"].start, spec.policies.quiet_hours["email"].end) == ("21:00", "08:00")
    assert [(c.channel, c.max, c.per) for c in spec.policies.frequency_caps] == [
        ("email", 3, timedelta(days=7)), ("sms", 2, timedelta(days=7)), ("any", 4, timedelta(days=7))]
    assert spec.policies.needs_double_opt_in("email", "marketing")
    assert not spec.policies.needs_double_opt_in("sms", "marketing")


def test_policies_yaml_values_override_the_defaults(make_project):
    policies = 'timezone: Europe/Berlin\non_cap: skip\ndouble_opt_in: {sms: [marketing]}\n'
    spec = load_project(make_project({"j": journey_yaml("j", SEND)}, policies=policies))
    assert spec.errors == []
    assert (spec.policies.timezone, spec.policies.on_cap) == ("Europe/Berlin", "skip")
    assert spec.policies.needs_double_opt_in("sms", "marketing")
    assert not spec.policies.needs_double_opt_in("email", "marketing")


def test_fifty_journeys_validate(make_project):
    journeys = {f"j{i:02d}": journey_yaml(f"j{i:02d}", """
        - id: wait_1h
          wait: 1h
        - id: hello
          send: {channel: email, template: hello, subject: "Hi {{ contact.first_name }}"}
        - id: check
          branch:
            when: {attribute: {plan: pro}}
            then: [{id: pro, send: {channel: sms, template: hello}}]
            else: [{id: basic, send: {channel: email, template: other, subject: Other}}]
        """) for i in range(50)}
    spec = load_project(make_project(journeys))
    assert spec.errors == []
    assert len(spec.journeys) == 50


def test_a_schema_error_does_not_hide_a_missing_template_in_the_same_journey(make_project):
    text = ("name: j\ntrigger: {event: signup}\nexit_whn: []\nsteps:\n"
            "  - {id: a, send: {channel: email, template: helo, subject: x}}\n")
    errors = errors_of(make_project, {"j": text})
    assert errors == ["journeys/j.yaml:3:1: unknown key 'exit_whn' (did you mean 'exit_when'?)",
                      "journeys/j.yaml:5:46: template 'helo' not found: expected templates/email/helo.html "
                      "(did you mean 'hello'?)"]


@pytest.mark.parametrize("text, plain", [
    ("name: j\nsteps:\n  - id: x\n   send: y\n", "this line is indented differently from the lines above it"),
    ("name: j\nsubject: Hello: news\n", "a second ': ' on this line: quote the value if it contains a colon"),
    ("name: j\ntags: [a, b\n", "a '[' is never closed: add the ']'"),
], ids=["indentation", "colon-in-value", "unclosed-list"])
def test_yaml_syntax_errors_are_said_in_plain_words_with_the_parsers_text_kept(text, plain):
    from nurture.spec.yaml_loader import load_located
    (error,) = load_located(text, "j.yaml")[2]
    assert error.message.startswith(f"YAML syntax error: {plain}") and error.message.endswith("]")


def test_a_step_of_an_unknown_kind_lists_the_kinds(make_project):
    from nurture.spec.project import load_project
    root = make_project({"j": "name: j\ntrigger: {event: signup}\nsteps:\n  - id: x\n    email: {template: hello}\n"})
    assert [str(e) for e in load_project(root).errors] == [
        "journeys/j.yaml:5:5: unknown key 'email' (a step is one of: wait, wait_until, send, branch, wait_for, "
        "split, update, handover, exit)"]


def test_template_variables_are_checked_a_fixed_key_is_an_error_a_contact_typo_a_warning(make_project, tmp_path):
    """`links.unsubcribe` fails every render: an error of the template, located, with the
    journey broken alone; `contact.frist_name` may be an attribute: a warning with a hint."""
    from nurture.spec.project import load_project
    root = make_project({"j": "name: j\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send: "
                              "{channel: email, template: promo, subject: Hi}\n"},
                        templates={"email/promo.html": "<p>Hi {{ contact.frist_name }} {{ contact.plan }}</p>\n"
                                                       "<a href=\"{{ links.unsubcribe }}\">x</a>"})
    spec = load_project(root)
    assert [str(e) for e in spec.errors] == [
        "templates/email/promo.html:2:1: 'links.unsubcribe' does not exist: every render of this template would "
        "fail (did you mean 'unsubscribe'?)"]
    assert "j" not in spec.journeys  # broken alone
    from tests.conftest import write_project
    root2 = write_project(tmp_path / "other", {"k": "name: k\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send: "
                                                     "{channel: sms, template: nudge}\n"},
                          templates={"sms/nudge.txt": "Hi {{ contact.frist_name }}, {{ contact.get('plan') }}"})
    spec2 = load_project(root2)
    assert spec2.errors == [] and [str(w) for w in spec2.warnings] == [
        "templates/sms/nudge.txt:1:1: warning: 'contact.frist_name' is not a contact field; did you mean "
        "'contact.first_name'? (only an attribute named 'frist_name' would fill it)"]


def test_a_subjects_and_a_preheaders_variables_are_checked_at_their_place_in_the_journey(make_project, tmp_path):
    """A typo in `subject:` was never warned, and every message of the step then failed with
    render_error ('dict object' has no attribute 'frist_name')."""
    from nurture.spec.project import load_project
    root = make_project({"j": "name: j\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send:\n"
                              "      channel: email\n      template: hello\n"
                              "      subject: \"Welcome, {{ contact.frist_name }}!\"\n"
                              "      preheader: \"{{ links.unsubcribe }}\"\n"})
    spec = load_project(root)
    assert [str(e) for e in spec.errors] == [
        "journeys/j.yaml:9:18: 'links.unsubcribe' does not exist: every render of this template would fail "
        "(did you mean 'unsubscribe'?)"]
    from tests.conftest import write_project
    root = write_project(tmp_path / "other", {"k": "name: k\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send:\n"
                              "      channel: email\n      template: hello\n"
                              "      subject: \"Welcome, {{ contact.frist_name }}!\"\n"})
    spec = load_project(root)
    assert spec.errors == [] and [str(w) for w in spec.warnings] == [
        "journeys/k.yaml:8:16: warning: 'contact.frist_name' is not a contact field; did you mean "
        "'contact.first_name'? (only an attribute named 'frist_name' would fill it)"]


def test_names_a_subject_binds_itself_are_not_checked_as_the_namespaces_they_shadow(tmp_path):
    """`{% set journey = … %}{{ journey.title }}` was "'journey.title' does not exist" — an error
    that stopped a journey whose subject renders fine."""
    from nurture.spec.project import load_project
    from tests.conftest import write_project
    subjects = ["{% for step in event.items %}{{ step.name }}{% endfor %}",
                "{% set journey = {'title': 'x'} %}{{ journey.title }}",
                "{% with imprint = contact %}{{ imprint.first_name }}{% endwith %}",
                "{% macro hi(links) %}{{ links.x }}{% endmacro %}{{ hi({'x': 1}) }}"]
    journeys = {f"j{i}": f"name: j{i}\ntrigger: {{event: signup}}\nsteps:\n  - id: a\n    send:\n"
                         f"      channel: email\n      template: hello\n      subject: \"{subject}\"\n"
                for i, subject in enumerate(subjects)}
    spec = load_project(write_project(tmp_path / "p", journeys))
    assert spec.errors == [] and spec.warnings == [] and sorted(spec.journeys) == ["j0", "j1", "j2", "j3"]


def test_a_goal_window_that_ends_before_the_first_message_is_a_warning(make_project):
    from nurture.spec.project import load_project
    root = make_project({"j": "name: j\ntrigger: {event: signup}\ngoal: {event: purchase, within: 2d}\nsteps:\n"
                              "  - {id: pause, wait: 3d}\n  - id: a\n    send: {channel: email, template: hello, "
                              "subject: Hi}\n"})
    spec = load_project(root)
    assert spec.errors == [] and [str(w) for w in spec.warnings] == [
        "journeys/j.yaml:3:33: warning: the goal window (2d) ends before the first message (3d of waiting): "
        "no conversion can be credited to the journey"]


def test_split_weights_are_percentages_that_sum_to_100(make_project):
    errors = errors_of(make_project, {"j": (
        "name: j\ntrigger: {event: signup}\nsteps:\n  - id: ab\n    split:\n"
        "      - {name: a, weight: 1}\n      - {name: b, weight: 3}\n")})
    assert errors == ["journeys/j.yaml:4:5: split weights are percentages and must sum to 100; these sum to 4 "
                      "(the same shares: a 25 and b 75)"]
