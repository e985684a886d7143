"""`nurture run` and the demo load the project once: the flows adopt the caller's load
(flows.runtime.adopt) instead of reading and checking every file again — unless a file
changed since that load began."""
from __future__ import annotations

import os

from flows.runtime import adopt, forget_runtimes, runtime_for
from nurture.spec.project import load_project
from tests.conftest import write_project
from tests.engine_fixtures import journey_yaml

JOURNEY = journey_yaml("welcome_series", '- {id: hello, send: {channel: email, template: hello, subject: "Hello"}}')


def _project(tmp_path, monkeypatch):
    root = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    monkeypatch.delenv("NURTURE_DATABASE_URL", raising=False)
    monkeypatch.delenv("NURTURE_DATA_DIR", raising=False)
    return root


def test_the_flows_use_the_project_their_caller_loaded(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch)
    spec = load_project(root)
    assert spec.fingerprint and not spec.errors
    adopt(spec)
    try:
        assert runtime_for(str(root)).project is spec
    finally:
        forget_runtimes()


def test_a_file_changed_after_the_load_is_read_again(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch)
    spec = load_project(root)
    adopt(spec)
    journey = root / "journeys" / "welcome_series.yaml"
    journey.write_text(journey.read_text().replace('subject: "Hello"', 'subject: "Hi there"'))
    later = journey.stat().st_mtime_ns + 2_000_000_000
    os.utime(journey, ns=(later, later))
    try:
        project = runtime_for(str(root)).project
        assert project is not spec
        assert project.journeys["welcome_series"].steps[0].send.subject == "Hi there"
    finally:
        forget_runtimes()


def test_a_load_of_one_journey_is_not_adopted(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch)
    partial = load_project(root, only="welcome_series")
    assert partial.fingerprint == ()
    adopt(partial)
    try:
        assert runtime_for(str(root)).project is not partial
    finally:
        forget_runtimes()


def test_another_callers_settings_give_another_runtime_and_the_same_ones_the_cached_one(tmp_path, monkeypatch):
    """The warm runner runs each caller's `nurture run` in one process with the caller's
    environment: a Runtime kept from the first caller must not send with its sender, channel
    or secret (README: "your arguments, environment and directory")."""
    root = _project(tmp_path, monkeypatch)
    monkeypatch.setenv("NURTURE_FROM_EMAIL", "first@alpha.example")
    try:
        first = runtime_for(str(root))
        assert first.settings.from_email == "first@alpha.example"
        monkeypatch.setenv("OTHER_TOOL_SETTING", "x")  # not Nurture's: the cached Runtime stays
        assert runtime_for(str(root)) is first
        monkeypatch.setenv("NURTURE_FROM_EMAIL", "second@beta.example")
        second = runtime_for(str(root))
        assert second is not first and second.settings.from_email == "second@beta.example"
    finally:
        forget_runtimes()
