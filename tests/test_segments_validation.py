"""Specification: journeys/segments.yaml is validated like a journey — every error in one
run, each as `path:line:col: message (hint)` — including destinations unknown to the
registry and the keys each destination needs."""
from __future__ import annotations

from nurture.spec.project import load_project
from tests.conftest import write_project


def errors_of(tmp_path, segments: str) -> list[str]:
    root = write_project(tmp_path / "p", {}, segments=segments)
    return [str(e) for e in load_project(root).errors]


def test_a_valid_segments_file_has_no_errors(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - {destination: hubspot, list_id: "45"}
              - {destination: meta, audience_id: 23851234567890}
              - {destination: google, account_id: "123", audience_id: "9", account_type: GOOGLE_ADS}
              - {destination: linkedin, dmp_segment_id: "77"}
              - {destination: csv, audience: vip}
          - name: big_vip
            when: {all: [{segment: vip}, {score: {gte: 50}}]}
        """) == []


def test_an_unknown_destination_is_located_and_gets_a_did_you_mean(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - destination: hubspott
                list_id: "45"
        """) == ["journeys/segments.yaml:5:22: unknown destination 'hubspott' (did you mean 'hubspot'?)"]


def test_a_missing_required_key_names_it_with_an_example(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - {destination: meta}
              - {destination: google, audience_id: "9"}
        """) == [
        "journeys/segments.yaml:5:9: destination 'meta' needs 'audience_id' "
        "(e.g. {destination: meta, audience_id: \"...\"})",
        "journeys/segments.yaml:6:9: destination 'google' needs 'account_id' "
        "(e.g. {destination: google, account_id: \"...\"})",
    ]


def test_an_unknown_key_of_a_destination_gets_a_did_you_mean(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - {destination: hubspot, list_id: "45", lst_id: "46"}
        """) == ["journeys/segments.yaml:5:47: unknown key 'lst_id' for destination 'hubspot' "
                 "(did you mean 'list_id'?)"]


def test_segment_references_must_exist_and_not_go_in_circles(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: a
            when: {segment: b}
          - name: b
            when: {any: [{segment: a}, {segment: vipp}]}
          - name: vip
            when: {attribute: {vip: true}}
        """) == [
        "journeys/segments.yaml:3:11: segments refer to each other in a circle: a -> b -> a",
        "journeys/segments.yaml:5:11: segments refer to each other in a circle: b -> a -> b",
        "journeys/segments.yaml:5:42: unknown segment 'vipp' (did you mean 'vip'?)",
    ]


def test_a_segment_cannot_use_a_trigger_property(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: carts
            when: {property: {cart_value: {gte: 20}}}
        """) == [
        "journeys/segments.yaml:3:22: 'property' needs a trigger event; a segment can use 'attribute', "
        "'event', 'score', 'consent' or 'segment'",
    ]


def test_shape_errors_come_first_with_their_location(tmp_path):
    assert errors_of(tmp_path, """
        segments:
          - name: nope
            whn: {attribute: {vip: true}}
        """) == ["journeys/segments.yaml:2:5: missing required key 'when'",
                 "journeys/segments.yaml:3:5: unknown key 'whn' (did you mean 'when'?)"]


def test_the_repository_example_segments_file_is_valid():
    from tests.conftest import REPO
    project = load_project(REPO)
    assert [str(e) for e in project.errors if e.path.endswith("segments.yaml")] == []
    assert {"recent_buyers", "cart_abandoners"} <= set(project.segments)
