"""`nurture demo` starts Prefect's temporary server in a thread while the month simulates (the
server is a subprocess: it comes up on the other core), and its Prefect ticks wait for that
thread before their first flow run. Nothing is started when a server is configured; a failure
is left to the flow run, which reports it."""
from __future__ import annotations

import threading

import pytest

from nurture.cli import run_verbs


@pytest.fixture
def started(monkeypatch):
    calls: list[str] = []
    from prefect.server.api import server
    monkeypatch.setattr(run_verbs, "_flows", lambda: calls.append("flows"))
    monkeypatch.setattr(server.SubprocessASGIServer, "start", lambda self, timeout=None: calls.append("server"))
    return calls


def test_without_a_server_the_temporary_one_starts_in_the_background(monkeypatch, started):
    monkeypatch.setattr(run_verbs, "_temporary_server_wanted", lambda: True)
    thread = run_verbs.prefect_in_background()
    thread.join(5)
    assert thread.name == "prefect-start" and not thread.is_alive()
    assert started == ["flows", "server"]


def test_a_configured_server_is_used_as_it_is(monkeypatch, started):
    monkeypatch.setattr(run_verbs, "_temporary_server_wanted", lambda: False)
    run_verbs.prefect_in_background().join(5)
    assert started == ["flows"]


def test_a_failure_is_left_to_the_flow_run(monkeypatch, started):
    def broken() -> bool:
        raise RuntimeError("no Prefect here")
    monkeypatch.setattr(run_verbs, "_temporary_server_wanted", broken)
    thread = run_verbs.prefect_in_background()
    thread.join(5)
    assert not thread.is_alive() and started == ["flows"]


def test_the_demos_prefect_ticks_wait_for_the_start(monkeypatch, tmp_path):
    release = threading.Event()
    order: list[str] = []

    def slow_start() -> threading.Thread:
        def run() -> None:
            release.wait(5)
            order.append("prefect ready")
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def fake_run_demo(project, *, seed, run_ticks, console, loaded=None):
        order.append("simulated")
        release.set()
        run_ticks("2026-11-04T00:00:00Z")

    monkeypatch.setattr(run_verbs, "prefect_in_background", slow_start)
    monkeypatch.setattr(run_verbs, "run_ticks", lambda journey, now, quiet=False: order.append(f"tick {now}"))
    monkeypatch.setattr("nurture.demo.run_demo", fake_run_demo)
    monkeypatch.setattr(run_verbs, "root", lambda: tmp_path)
    run_verbs.demo(seed=7)
    assert order == ["simulated", "prefect ready", "tick 2026-11-04T00:00:00Z"]
