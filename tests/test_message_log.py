"""Specification: the message log answers an operator's questions without SQL — which
message, which enrollment, which attempt, which provider id and Message-ID, which subject,
which A/B arm."""
from __future__ import annotations

from datetime import timedelta

from nurture.messages import message_log, split_arms
from nurture.runtime import run_tick
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, subscriber

T0 = utc(2026, 3, 4, 10, 0)
AB = journey_yaml("ab", """
- id: hello
  send: {channel: email, template: hello, subject: "Hello {{ contact.first_name }}"}
- id: test
  split:
    - name: short
      weight: 50
      steps:
        - {id: short_mail, send: {channel: email, template: hello, subject: Short}}
    - name: long
      weight: 50
      steps:
        - id: long_wait
          wait: 1h
        - {id: long_mail, send: {channel: email, template: hello, subject: Long}}
""")


def test_every_message_shows_its_id_enrollment_attempts_message_id_subject_and_arm(make_runtime, store):
    rt = make_runtime({"ab": AB})
    for i in range(6):
        cid = subscriber(store, f"c{i}@example.com", first_name=f"Ann{i}")
        add_event(store, cid, "signup", T0)
    run_tick(rt, "ab", T0 + timedelta(minutes=1))
    run_tick(rt, "ab", T0 + timedelta(hours=2))
    log = message_log(store, "ab", project=rt.project, from_email="news@shop.example")
    assert len(log) == 12 and len({m["id"] for m in log}) == 12
    assert {m["step"]: m["arm"] for m in log} == {"hello": None, **{s: s.split("_")[0] for s in
                                                  {m["step"] for m in log} if s != "hello"}}
    first = log[0]
    assert first["subject"] == "Hello Ann0" and first["attempts"] == 1 and first["attempt_key"] == "send"
    assert first["message_id"] == f"<nurture.{first['id']}.ab@shop.example>" and first["enrollment_id"]
    assert first["provider_id"] and first["purpose"] == "marketing" and first["to"] == "c0@example.com"
    by_enrollment = {}
    for m in log:
        by_enrollment.setdefault(m["enrollment_id"], []).append(m["step"])
    assert all(len(steps) == 2 for steps in by_enrollment.values())  # one hello + one arm mail each


def test_split_arms_maps_nested_steps_to_their_innermost_arm(make_runtime):
    rt = make_runtime({"ab": AB})
    assert split_arms(rt.project.journeys["ab"].steps) == {"short_mail": "short", "long_wait": "long",
                                                          "long_mail": "long"}
