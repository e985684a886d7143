"""Specification of instant triggers (nurture.runtime.instant): an event posted to `nurture web`
starts its journey within a second, without any tick — behind the same guards as a tick (quiet
hours defer, no consent suppresses) and with the same at-most-once rule beside other web
processes and a scheduled tick; a journey that raises does not stop the worker."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable

from fastapi.testclient import TestClient

from nurture.runtime import run_tick
from nurture.runtime.context import Runtime
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.web import create_app
from tests.conftest import utc
from tests.engine_fixtures import add_contact, journey_yaml, messages, subscriber

NOW = utc(2026, 3, 2, 12, 0)
INGEST = "ingest-token-instant-42"
AUTH = {"Authorization": f"Bearer {INGEST}"}
WELCOME = journey_yaml("welcome", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}",
                       trigger="{event: lead}")


def client(rt: Runtime, now, **env: str) -> TestClient:
    """The app over `rt`'s project and store, its lifespan (and so the worker) running."""
    full = {**rt.env, "NURTURE_INGEST_TOKEN": INGEST, **env}
    return TestClient(create_app(rt.store, rt.project, full, clock=lambda: now))


def lead(email: str, n: int = 1, at=NOW) -> dict:
    return {"event_id": f"lead-{email}-{n}", "email": email, "event": "lead", "timestamp": at.isoformat()}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def emls(rt: Runtime) -> list:
    return list((rt.data_dir / "outbox" / "email").rglob("*.eml"))


def test_a_posted_event_is_sent_within_seconds_without_a_tick(make_runtime):
    rt = make_runtime({"welcome": WELCOME})
    subscriber(rt.store, "ada@example.com")
    with client(rt, NOW) as http:
        started = time.monotonic()
        assert http.post("/events", json=lead("ada@example.com"), headers=AUTH).status_code == 200
        assert wait_for(lambda: [m.status for m in messages(rt.store)] == ["sent"])
        elapsed = time.monotonic() - started
        instant = http.app.state.instant
        assert wait_for(lambda: instant.counts().get("welcome", {}).get("sent") == 1)
        counts = instant.counts()
    assert elapsed < 5
    assert len(emls(rt)) == 1
    assert counts["welcome"]["runs"] >= 1 and counts["welcome"]["sent"] == 1
    # the next tick's artifact reports it (flows/journey.py report_task), exactly once
    from flows.journey import instant_text
    from nurture.runtime.instant import take_instant_runs
    taken = take_instant_runs(rt.store, "welcome")
    assert (taken["runs"], taken["enrolled"], taken["sent"]) == (counts["welcome"]["runs"], 1, 1)
    assert instant_text(taken).endswith("UTC): enrolled 1, sent 1")
    assert take_instant_runs(rt.store, "welcome") == {}


def test_a_lead_at_2300_is_deferred_by_quiet_hours_not_sent(make_runtime):
    late = utc(2026, 3, 2, 23, 0)  # the test policies: e-mail quiet from 21:00 to 08:00 UTC
    rt = make_runtime({"welcome": WELCOME})
    subscriber(rt.store, "ada@example.com")
    with client(rt, late) as http:
        http.post("/events", json=lead("ada@example.com", at=late), headers=AUTH)
        assert wait_for(lambda: bool(messages(rt.store)))
    assert [(m.status, m.reason) for m in messages(rt.store)] == [("deferred", "quiet_hours")]
    assert emls(rt) == []


def test_a_lead_without_consent_is_suppressed_not_sent(make_runtime):
    rt = make_runtime({"welcome": WELCOME})
    add_contact(rt.store, "bob@example.com")
    with client(rt, NOW) as http:
        http.post("/events", json=lead("bob@example.com"), headers=AUTH)
        assert wait_for(lambda: bool(messages(rt.store, journey="welcome")))
    assert [(m.status, m.reason) for m in messages(rt.store, journey="welcome")] == [("suppressed", "no_consent")]


def test_instant_triggers_are_off_with_nurture_instant_0(make_runtime):
    rt = make_runtime({"welcome": WELCOME})
    subscriber(rt.store, "ada@example.com")
    with client(rt, NOW, NURTURE_INSTANT="0") as http:
        http.post("/events", json=lead("ada@example.com"), headers=AUTH)
        time.sleep(0.5)
        assert not http.app.state.instant.running
    assert messages(rt.store) == []
    run_tick(rt, "welcome", NOW)  # the next tick does it, as before
    assert [m.status for m in messages(rt.store)] == ["sent"]


def test_two_web_processes_and_a_tick_send_each_message_once(make_runtime, db_url):
    """Two apps, each with its own store (engine) and runtime on the same database, receive the
    same events while a tick of the journey runs beside them: every message goes out once."""
    rt = make_runtime({"welcome": WELCOME})
    emails = [f"c{i}@example.com" for i in range(30)]
    for email in emails:
        subscriber(rt.store, email)
    # each app gets its own events for the same contacts, so both workers run the journey
    batches = [{"events": [lead(email, n) for email in emails]} for n in (1, 2)]
    stores = [open_store(db_url) for _ in range(2)]
    spec = load_project(rt.project.root)
    apps = [client(Runtime(s, spec, env=dict(rt.env)), NOW) for s in stores]
    ticker = Runtime(open_store(db_url), spec, env=dict(rt.env), batch_size=5)
    try:
        with apps[0] as first, apps[1] as second:
            posts = [threading.Thread(target=http.post, args=("/events",), kwargs=dict(json=batch, headers=AUTH))
                     for http, batch in zip((first, second), batches)]
            for thread in posts:
                thread.start()
            run_tick(ticker, "welcome", NOW)
            for thread in posts:
                thread.join(30)
            assert wait_for(lambda: len(messages(rt.store, status="sent")) >= len(emails), timeout=30)
            workers = [first.app.state.instant, second.app.state.instant]
            assert wait_for(lambda: all(w.runs["welcome"] for w in workers))
            time.sleep(0.5)  # anything still under way in either worker finishes
    finally:
        ticker.close()
        ticker.store.dispose()
        for s in stores:
            s.dispose()
    sends = Counter((m.enrollment_id, m.step_id) for m in messages(rt.store))
    assert set(sends.values()) == {1} and len(sends) == len(emails)
    assert {m.status for m in messages(rt.store)} == {"sent"}
    assert len(emls(rt)) == len(emails)


DAYTIME_POLICIES = """
version: "test-1"
timezone: UTC
quiet_hours: {}
frequency_caps: []
double_opt_in: {}
"""


def test_two_nurture_web_processes_and_a_tick_send_each_message_once(make_runtime, db_url, tmp_path):
    """Two real `nurture web` processes (uvicorn, real clock) on one database get events for
    the same contacts while this process ticks the journey: each message goes out once."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.test_web_site import REPO, SECRET, free_port
    rt = make_runtime({"welcome": WELCOME}, policies=DAYTIME_POLICIES)
    emails = [f"p{i}@example.com" for i in range(30)]
    for email in emails:
        subscriber(rt.store, email)
    ports = [free_port(), free_port()]
    base = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    procs = [subprocess.Popen(
        [sys.executable, "-c", "from nurture.cli import main; main()", "--project", str(rt.project.root),
         "web", "--port", str(port)], cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**base, **rt.env, "NURTURE_DATABASE_URL": db_url, "NURTURE_SECRET_KEY": SECRET,
             "NURTURE_PUBLIC_URL": f"http://127.0.0.1:{port}", "NURTURE_INGEST_TOKEN": INGEST}) for port in ports]
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=AUTH) for port in ports]

        def up(http: httpx.Client) -> bool:
            try:
                return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False
        assert wait_for(lambda: all(up(c) for c in clients), timeout=60), [p.poll() for p in procs]
        now = datetime.now(timezone.utc)
        batches = [{"events": [lead(email, n, at=now) for email in emails]} for n in (1, 2)]
        posts = [threading.Thread(target=http.post, args=("/events",), kwargs=dict(json=batch))
                 for http, batch in zip(clients, batches)]
        for thread in posts:
            thread.start()
        run_tick(rt, "welcome")
        for thread in posts:
            thread.join(30)
        assert wait_for(lambda: len(messages(rt.store, status="sent")) >= len(emails), timeout=30)
        time.sleep(0.5)
        for http in clients:
            http.close()
    finally:
        for proc in procs:
            proc.terminate()
        errors = [proc.communicate(timeout=30)[1].decode() for proc in procs]
    sends = Counter((m.enrollment_id, m.step_id) for m in messages(rt.store))
    assert set(sends.values()) == {1} and len(sends) == len(emails)
    assert {m.status for m in messages(rt.store)} == {"sent"}
    assert len(emls(rt)) == len(emails)
    assert not any("Traceback" in e for e in errors), errors


def test_the_worker_survives_a_journey_that_raises(make_runtime, monkeypatch, caplog):
    import nurture.runtime.instant as instant_module
    broken = journey_yaml("broken", "- id: hi\n  send: {channel: email, template: hello, subject: Hi}",
                          trigger="{event: lead}")
    rt = make_runtime({"welcome": WELCOME, "broken": broken})
    subscriber(rt.store, "ada@example.com")
    subscriber(rt.store, "bob@example.com")
    real = instant_module.run_tick

    def failing(rt_, journey, now):
        if journey == "broken":
            raise RuntimeError("boom")
        return real(rt_, journey, now)
    monkeypatch.setattr(instant_module, "run_tick", failing)
    with client(rt, NOW) as http:
        http.post("/events", json=lead("ada@example.com"), headers=AUTH)
        assert wait_for(lambda: len(messages(rt.store, status="sent")) == 1)
        http.post("/events", json=lead("bob@example.com"), headers=AUTH)
        assert wait_for(lambda: len(messages(rt.store, status="sent")) == 2)
        assert http.get("/healthz").json() == {"ok": True}
        instant = http.app.state.instant
        assert wait_for(lambda: instant.counts().get("welcome", {}).get("sent") == 2)
        counts = instant.counts()
    assert counts["broken"]["failed"] >= 2 and counts["welcome"]["sent"] == 2
    assert "instant run of broken failed" in caplog.text


# ---------------------------------------------------------------- a web process follows the project's files

PROMO = journey_yaml("welcome", """
- id: wait_1h
  wait: 1h
- id: promo
  send: {channel: email, template: hello, subject: "Old promo - withdrawn"}
""")
NEWSLETTER = journey_yaml("welcome", """
- id: wait_1h
  wait: 1h
- id: newsletter
  send: {channel: email, template: other, subject: Newsletter}
""")


def signup(email: str, at) -> dict:
    return {"event_id": f"signup-{email}", "email": email, "event": "signup", "timestamp": at.isoformat()}


def test_a_web_process_started_before_an_edit_runs_the_new_version_not_the_removed_step(make_runtime):
    """`nurture web` read the project once, at start: after the marketer removed `promo` and
    the scheduled tick moved Ada onto the new version, the web process's first instant run
    moved her back onto the old one and sent her the withdrawn promo (audit, concurrency §1)."""
    from datetime import timedelta

    from tests.engine_fixtures import add_event, enrollments
    started = make_runtime({"welcome": PROMO})
    store = started.store
    ada = subscriber(store, "ada@example.com")
    subscriber(store, "bob@example.com")
    add_event(store, ada, "signup", NOW)
    run_tick(started, "welcome", NOW)  # Ada waits in wait_1h under the first version
    later = NOW + timedelta(hours=2)
    with client(started, later) as http:  # started before the edit
        (started.project.root / "journeys" / "welcome.yaml").write_text(NEWSLETTER)
        ticker = Runtime(store, load_project(started.project.root), env=dict(started.env))
        run_tick(ticker, "welcome", NOW + timedelta(minutes=30))  # the scheduled tick: Ada moves on
        edited = ticker.plan("welcome").version
        assert http.post("/events", json=signup("bob@example.com", later), headers=AUTH).status_code == 200
        instant = http.app.state.instant
        assert wait_for(lambda: instant.counts().get("welcome", {}).get("sent") == 1)
        ticker.close()
    assert [(m.step_id, m.subject) for m in messages(store, contact_id=ada)] == [("newsletter", "Newsletter")]
    assert {e.version for e in enrollments(store)} == {edited}  # Ada, and Bob enrolled by the web


def test_a_journey_deleted_after_the_web_process_started_no_longer_runs_there(make_runtime):
    rt = make_runtime({"welcome": WELCOME, "other": WELCOME.replace("name: welcome", "name: other")})
    subscriber(rt.store, "ada@example.com")
    with client(rt, NOW) as http:
        (rt.project.root / "journeys" / "welcome.yaml").unlink()
        http.post("/events", json=lead("ada@example.com"), headers=AUTH)
        instant = http.app.state.instant
        assert wait_for(lambda: instant.counts().get("other", {}).get("sent") == 1)
        counts = instant.counts()
    assert "welcome" not in counts
    assert [m.journey for m in messages(rt.store)] == ["other"]


def test_a_file_broken_after_the_web_process_started_stops_its_journey_not_the_events(make_runtime, caplog):
    """A typo in a journey file: its journey stops running here (as in the scheduled ticks) and
    the error is logged with its location; a broken policies.yaml stops every journey here and
    the events go on being stored under the last valid policies. No 500, no traceback."""
    import logging
    caplog.set_level(logging.INFO, logger="nurture.project")
    rt = make_runtime({"welcome": WELCOME, "other": WELCOME.replace("name: welcome", "name: other")})
    for name in ("ada", "bob"):
        subscriber(rt.store, f"{name}@example.com")
    journeys = rt.project.root / "journeys"
    with client(rt, NOW) as http:
        instant = http.app.state.instant
        (journeys / "welcome.yaml").write_text(WELCOME.replace("template: hello", "tempalte: hello"))
        assert http.post("/events", json=lead("ada@example.com"), headers=AUTH).json()["inserted"] == 1
        assert wait_for(lambda: instant.counts().get("other", {}).get("sent") == 1)
        (journeys / "policies.yaml").write_text("version: [unclosed\n")
        answer = http.post("/events", json=lead("bob@example.com"), headers=AUTH)
        time.sleep(0.5)
        counts = instant.counts()
    assert answer.status_code == 200 and answer.json()["inserted"] == 1
    assert "welcome" not in counts and counts["other"]["sent"] == 1  # Bob: no journey ran
    assert [(m.journey, m.address) for m in messages(rt.store)] == [("other", "ada@example.com")]
    assert "welcome.yaml:" in caplog.text and "policies.yaml:" in caplog.text
    assert "Traceback" not in caplog.text


# ---------------------------------------------------------------- speed to lead, per journey

def test_speed_to_lead_per_journey_is_median_and_p90_from_the_trigger_event_to_the_first_message(make_project, store):
    from datetime import timedelta

    from nurture.reporting import build_report
    from nurture.reporting.contract import report_json
    from nurture.reporting.views import speed_to_lead_text
    from nurture.store.tables import enrollment_t, message_t
    from tests.engine_fixtures import add_event

    spec = load_project(make_project({"welcome": WELCOME}))
    t0 = utc(2026, 3, 2, 9, 0)

    def enrollment(conn, cid, event_pk):
        return conn.execute(enrollment_t.insert().values(
            contact_id=cid, journey="welcome", version="v1", step_id=None, status="completed", holdout=False,
            entered_at=t0, trigger_event_pk=event_pk, revenue=0.0, defer_count=0, state={})).inserted_primary_key[0]

    def sent(conn, eid, cid, at, step="hello", status="sent"):
        conn.execute(message_t.insert().values(
            enrollment_id=eid, contact_id=cid, journey="welcome", step_id=step, attempt_key="send", channel="email",
            purpose="marketing", template="hello", status=status, due_at=at, created_at=at, attempts=1,
            sent_at=at if status == "sent" else None))

    delays = [1, 2, 3, 10]  # minutes: median 2.5, p90 7.9 (linear interpolation)
    contacts = [add_contact(store, f"s{i}@example.com") for i in range(7)]
    events = [add_event(store, cid, "lead", t0) for cid in contacts]
    with store.engine.begin() as conn:
        for cid, pk, delay in zip(contacts, events, delays):
            eid = enrollment(conn, cid, pk)
            sent(conn, eid, cid, t0 + timedelta(minutes=delay))
            sent(conn, eid, cid, t0 + timedelta(days=1), step="later")  # only the first message counts
        eid = enrollment(conn, contacts[4], None)  # no trigger event (a segment trigger): not counted
        sent(conn, eid, contacts[4], t0 + timedelta(minutes=50))
        eid = enrollment(conn, contacts[5], events[5])  # never sent a message: not counted
        sent(conn, eid, contacts[5], t0, status="suppressed")
        eid = enrollment(conn, contacts[6], events[6])  # "sent" before its event (a client's clock): left out
        sent(conn, eid, contacts[6], t0 - timedelta(minutes=5))
    report = build_report(store, spec, t0 + timedelta(days=2))
    stl = report.journeys[0].speed_to_lead_minutes
    assert (stl.median, round(stl.p90, 6), stl.n) == (2.5, 7.9, 4)
    assert report_json(report)["journeys"][0]["speed_to_lead_minutes"] == {"median": 2.5, "p90": stl.p90, "n": 4}
    assert speed_to_lead_text(report.journeys[0]) == "Speed to lead: median 2 min, p90 8 min (over 4 leads)"
    from nurture.reporting.html_page import render_html
    from nurture.reporting.summary import journey_markdown
    assert speed_to_lead_text(report.journeys[0]) in journey_markdown(report.journeys[0])
    assert "Speed to lead: median 2 min" in render_html(report)
