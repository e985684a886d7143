"""`nurture simulate`: the real tick, driven by a discrete-event clock on a scratch copy.

Known timelines, exact to the second: a reminder an hour after the event, a send inside quiet
hours deferred to 08:00 in the contact's own zone, the night Berlin switches to summer time.
Events the database already holds inside the period wake the journeys as a file's events do;
coalesced moments keep tick-all's order across journeys; shipped journeys simulated do what
real 5-minute ticks do. The project's database and outbox are never changed; bad input is one
clear error.
"""
from __future__ import annotations

import hashlib
import os
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.simulate import EventFeed, simulate
from nurture.store.db import open_store
from nurture.store.tables import contact_t, message_t
from tests.cli_inproc import run_cli
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_event, journey_yaml, subscriber

CART = """
name: cart
trigger: {event: add_to_cart, lookback: 2d}
exit_when:
  - event: purchase
steps:
  - id: wait_1h
    wait: 1h
  - id: reminder
    send: {channel: email, template: hello, subject: "Still thinking, {{ contact.first_name }}?"}
"""
# Sends at once: quiet hours (email 21:00-08:00, conftest's policies) decide when.
NIGHT = """
name: night
trigger: {event: late_visit, lookback: 2d}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Hello"}
"""
# Wakes only for the events its `where` may accept (nurture.simulate.surely_refused).
NEWSLETTER = """
name: newsletter
trigger: {event: signup, where: {property: {form: [newsletter, footer]}}, lookback: 2d}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome"}
"""
MORNING = """
name: morning
trigger: {event: late_visit, lookback: 2d}
steps:
  - id: nine
    wait_until: "09:00"
  - id: hello
    send: {channel: email, template: hello, subject: "Good morning"}
"""
CONTACTS = """email,first_name,timezone,consent_email
ann@example.com,Ann,Europe/Berlin,granted
ned@example.com,Ned,America/New_York,granted
bea@example.com,Bea,Europe/Berlin,granted
"""


@pytest.fixture
def project(tmp_path, sqlite_template) -> Path:
    root = write_project(tmp_path / "shop", {"cart": CART, "night": NIGHT, "morning": MORNING,
                                             "newsletter": NEWSLETTER})
    (root / ".nurture").mkdir()
    shutil.copyfile(sqlite_template, root / ".nurture" / "nurture.db")
    (root / "contacts.csv").write_text(CONTACTS, encoding="utf-8")
    return root


def write_events(root: Path, *events: tuple) -> Path:
    """(e-mail, event, timestamp[, properties]) rows as an events file."""
    path = root / "events.jsonl"
    path.write_text("".join(json.dumps({"event_id": f"e{i}", "email": event[0], "event": event[1],
                                        "properties": event[3] if len(event) > 3 else {},
                                        "timestamp": event[2]}) + "\n" for i, event in enumerate(events)),
                    encoding="utf-8")
    return path


def nurture(monkeypatch, capsys, root: Path, *args: str) -> tuple[int, str, str]:
    """`nurture ARGS` in this process (tests/cli_inproc: exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NURTURE_DATABASE_URL", "NURTURE_DATA_DIR",
                                                            "NURTURE_DEBUG", "NURTURE_EMAIL_BACKEND")}
    proc = run_cli(list(args), {**env, "NURTURE_PROJECT": str(root), "COLUMNS": "200"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def simulate_json(monkeypatch, capsys, root: Path, *args: str) -> dict:
    code, out, err = nurture(monkeypatch, capsys, root, "simulate", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def project_state(root: Path) -> dict:
    """Every file of the project's data directory with its hash (database, outbox …)."""
    data = root / ".nurture"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def timeline(result: dict, contact: str, journey: str) -> list[tuple]:
    return [(r["kind"], r["step"], r["outcome"], r["reason"], r["at"], r["local_time"])
            for r in result["timeline"] if r["contact"] == contact and r["journey"] == journey]


def test_a_1h_cart_reminder_leaves_exactly_one_hour_after_the_event_and_the_project_is_untouched(
        monkeypatch, capsys, project):
    events = write_events(project, ("ann@example.com", "add_to_cart", "2026-03-10T10:02:17Z"),
                          ("ned@example.com", "add_to_cart", "2026-03-10T10:40:00Z"),
                          ("ned@example.com", "purchase", "2026-03-10T11:10:00Z"),
                          ("bea@example.com", "add_to_cart", "2026-03-10T10:00:00Z"),
                          ("bea@example.com", "purchase", "2026-03-10T10:30:00Z"))
    before = project_state(project)
    result = simulate_json(monkeypatch, capsys, project, "--journey", "cart", "--from", "2026-03-10T00:00:00Z",
                           "--to", "2026-03-11T00:00:00Z", "--contacts", str(project / "contacts.csv"),
                           "--events", str(events))
    assert timeline(result, "ann@example.com", "cart") == [
        ("enrolled", "", "enrolled", "", "2026-03-10T10:02:17+00:00", "2026-03-10T11:02:17+01:00"),
        ("send", "reminder", "sent", "", "2026-03-10T11:02:17+00:00", "2026-03-10T12:02:17+01:00"),
        ("left", "", "completed", "", "2026-03-10T11:02:17+00:00", "2026-03-10T12:02:17+01:00")]
    # Ned bought at 11:10, before his reminder was due at 11:40: he left at the purchase.
    assert timeline(result, "ned@example.com", "cart") == [
        ("enrolled", "", "enrolled", "", "2026-03-10T10:40:00+00:00", "2026-03-10T06:40:00-04:00"),
        ("left", "", "exited", "exit_when", "2026-03-10T11:10:00+00:00", "2026-03-10T07:10:00-04:00")]
    # Bea bought half an hour after her cart, before any tick had enrolled her: she left then.
    assert timeline(result, "bea@example.com", "cart") == [
        ("enrolled", "", "enrolled", "", "2026-03-10T10:00:00+00:00", "2026-03-10T11:00:00+01:00"),
        ("left", "", "exited", "exit_when", "2026-03-10T10:30:00+00:00", "2026-03-10T11:30:00+01:00")]
    assert {(r["step"], r["outcome"]): r["count"] for r in result["funnel"]} == {
        ("", "enrolled"): 3, ("", "exited"): 2, ("wait_1h", "waited"): 1, ("reminder", "sent"): 1}
    assert result["events_ingested"] == 5
    # Ticks only when something is due: the start, Bea's purchase, Ann's reminder, Ned's
    # purchase, the end — not at the carts (their enrollments carry the carts' times anyway).
    assert result["ticks"] == 5
    assert project_state(project) == before  # the database and outbox are exactly as they were
    assert not (project / ".nurture" / "outbox").exists()


def test_a_trigger_event_its_where_refuses_wakes_no_tick(monkeypatch, capsys, project):
    events = write_events(project, ("ann@example.com", "signup", "2026-03-10T10:00:00Z", {"form": "newsletter"}),
                          ("ned@example.com", "signup", "2026-03-10T12:00:00Z", {"form": "whitepaper"}),
                          ("bea@example.com", "signup", "2026-03-10T14:00:00Z"),
                          ("bea@example.com", "signup", "2026-03-10T15:00:00Z", {"form": 7}))
    result = simulate_json(monkeypatch, capsys, project, "--journey", "newsletter", "--from", "2026-03-10T09:00:00Z",
                           "--to", "2026-03-10T18:00:00Z", "--contacts", str(project / "contacts.csv"),
                           "--events", str(events))
    assert timeline(result, "ann@example.com", "newsletter")[:2] == [
        ("enrolled", "", "enrolled", "", "2026-03-10T10:00:00+00:00", "2026-03-10T11:00:00+01:00"),
        ("send", "hello", "sent", "", "2026-03-10T10:00:00+00:00", "2026-03-10T11:00:00+01:00")]
    assert {r["contact"] for r in result["timeline"]} == {"ann@example.com"}
    # The start, Ann's signup, Bea's second (a number: maybe, the database decides), the end;
    # not Ned's whitepaper or Bea's signup without a form.
    assert result["ticks"] == 4


@pytest.mark.parametrize("where, properties, refused", [
    ({"property": {"form": "newsletter"}}, {"form": "newsletter"}, False),
    ({"property": {"form": "newsletter"}}, {"form": "whitepaper"}, True),
    ({"property": {"form": "newsletter"}}, {}, True),  # a missing property matches no `eq`
    ({"property": {"form": "newsletter"}}, None, False),  # properties unknown: maybe
    ({"property": {"form": ["a", "b"]}}, {"form": "b"}, False),
    ({"property": {"form": ["a", "b"]}}, {"form": "c"}, True),
    ({"property": {"form": "7"}}, {"form": 7}, False),  # a number against text: the database decides
    ({"property": {"value": {"gte": 10}}}, {"value": 1}, False),  # other operators: maybe
    ({"property": {"form": "a", "plan": "pro"}}, {"form": "a", "plan": "free"}, True),
    ({"any": [{"property": {"form": "a"}}, {"property": {"form": "b"}}]}, {"form": "c"}, True),
    ({"any": [{"property": {"form": "a"}}, {"attribute": {"vip": True}}]}, {"form": "c"}, False),
    ({"all": [{"attribute": {"vip": True}}, {"property": {"form": "a"}}]}, {"form": "c"}, True),
    ({"not": {"property": {"form": "a"}}}, {"form": "a"}, False),  # never decided under a `not`
    ({"property": {"form": "a"}, "attribute": {"vip": True}}, {"form": "b"}, True),
])
def test_surely_refused_decides_only_what_is_certain(where, properties, refused):
    from nurture.simulate import surely_refused
    from nurture.spec.models import Condition
    assert surely_refused(Condition.model_validate(where), properties) is refused


def test_events_are_only_visible_from_their_own_timestamp(monkeypatch, capsys, project):
    # The purchase comes after the reminder: the reminder must go (the engine cannot see it yet).
    events = write_events(project, ("ann@example.com", "add_to_cart", "2026-03-10T10:00:00Z"),
                          ("ann@example.com", "purchase", "2026-03-10T11:00:01Z"))
    result = simulate_json(monkeypatch, capsys, project, "--journey", "cart", "--from", "2026-03-10T09:00:00Z",
                           "--to", "2026-03-10T12:00:00Z", "--contacts", str(project / "contacts.csv"),
                           "--events", str(events), "--contact", "Ann@Example.com")
    assert [(r["kind"], r["outcome"], r["at"]) for r in result["timeline"]] == [
        ("enrolled", "enrolled", "2026-03-10T10:00:00+00:00"),
        ("send", "sent", "2026-03-10T11:00:00+00:00"),
        ("left", "completed", "2026-03-10T11:00:00+00:00")]


def test_a_send_due_in_quiet_hours_waits_for_0800_in_the_contacts_own_zone(monkeypatch, capsys, project):
    # 01:30 UTC is 21:30 in New York (EDT since March 8th): inside 21:00-08:00 there, so the
    # send waits for 08:00 New York time = 12:00 UTC. Ann in Berlin (02:30 local) waits for
    # 08:00 Berlin time = 07:00 UTC.
    events = write_events(project, ("ned@example.com", "late_visit", "2026-03-10T01:30:00Z"),
                          ("ann@example.com", "late_visit", "2026-03-10T01:30:00Z"))
    result = simulate_json(monkeypatch, capsys, project, "--journey", "night", "--from", "2026-03-10T00:00:00Z",
                           "--to", "2026-03-11T00:00:00Z", "--contacts", str(project / "contacts.csv"),
                           "--events", str(events))
    assert timeline(result, "ned@example.com", "night")[1:] == [
        ("send", "hello", "deferred", "quiet_hours", "2026-03-10T01:30:00+00:00", "2026-03-09T21:30:00-04:00"),
        ("send", "hello", "sent", "", "2026-03-10T12:00:00+00:00", "2026-03-10T08:00:00-04:00"),
        ("left", "", "completed", "", "2026-03-10T12:00:00+00:00", "2026-03-10T08:00:00-04:00")]
    deferral = next(r for r in result["timeline"] if r["contact"] == "ned@example.com" and r["outcome"] == "deferred")
    assert (deferral["until"], deferral["until_local"]) == ("2026-03-10T12:00:00+00:00", "2026-03-10T08:00:00-04:00")
    assert [r["at"] for r in result["timeline"] if r["contact"] == "ann@example.com" and r["outcome"] == "sent"] == [
        "2026-03-10T07:00:00+00:00"]
    funnel = {(r["step"], r["outcome"], r["reason"]): r["count"] for r in result["funnel"]}
    assert funnel[("hello", "deferred", "quiet_hours")] == 2 and funnel[("hello", "sent", "")] == 2


def test_the_night_berlin_switches_to_summer_time(monkeypatch, capsys, project):
    # Saturday 2026-03-28 22:30 CET (21:30 UTC). At 02:00 the clocks jump to 03:00 CEST (UTC+2):
    # 08:00 on Sunday is 06:00 UTC, not 07:00; 09:00 is 07:00 UTC.
    events = write_events(project, ("bea@example.com", "late_visit", "2026-03-28T21:30:00Z"))
    result = simulate_json(monkeypatch, capsys, project, "--from", "2026-03-28T20:00:00Z", "--to",
                           "2026-03-29T20:00:00Z", "--contacts", str(project / "contacts.csv"), "--events", str(events),
                           "--contact", "bea@example.com")
    assert timeline(result, "bea@example.com", "night")[1:3] == [
        ("send", "hello", "deferred", "quiet_hours", "2026-03-28T21:30:00+00:00", "2026-03-28T22:30:00+01:00"),
        ("send", "hello", "sent", "", "2026-03-29T06:00:00+00:00", "2026-03-29T08:00:00+02:00")]
    assert timeline(result, "bea@example.com", "morning")[1] == (
        "send", "hello", "sent", "", "2026-03-29T07:00:00+00:00", "2026-03-29T09:00:00+02:00")
    assert {r["contact"] for r in result["timeline"]} == {"bea@example.com"}  # --contact filters the timeline


def test_simulate_prints_the_funnel_and_the_contacts_timeline(monkeypatch, capsys, project):
    events = write_events(project, ("ann@example.com", "add_to_cart", "2026-03-10T10:00:00Z"))
    code, out, err = nurture(monkeypatch, capsys, project, "simulate", "--journey", "cart", "--from",
                             "2026-03-10T09:00:00Z", "--to", "2026-03-10T12:00:00Z", "--contacts",
                             str(project / "contacts.csv"), "--events", str(events), "--contact", "ann@example.com")
    assert code == 0, err
    assert "journey cart: enrolled 1" in out and "reminder" in out and "sent" in out
    assert "timeline of ann@example.com" in out and "2026-03-10 11:00:00" in out and "12:00 +01:00" in out


def test_simulate_runs_on_a_copy_of_the_projects_database(monkeypatch, capsys, project):
    # The project's own database holds the contact, its consent and the event: the copy acts on them.
    from datetime import datetime, timezone

    from tests.engine_fixtures import add_contact, add_event, set_consent
    store = open_store(f"sqlite:///{project / '.nurture' / 'nurture.db'}")
    at = datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc)
    cid = add_contact(store, "zoe@example.com", timezone="Europe/Berlin", first_name="Zoe")
    set_consent(store, cid, at=at - timedelta(days=30))
    add_event(store, cid, "add_to_cart", at)
    store.dispose()
    before = project_state(project)
    result = simulate_json(monkeypatch, capsys, project, "--journey", "cart", "--from", "2026-03-10T10:30:00Z",
                           "--to", "2026-03-10T12:00:00Z")
    assert [(r["kind"], r["outcome"], r["at"]) for r in result["timeline"]] == [
        ("enrolled", "enrolled", "2026-03-10T10:00:00+00:00"),
        ("send", "sent", "2026-03-10T11:00:00+00:00"),
        ("left", "completed", "2026-03-10T11:00:00+00:00")]
    assert project_state(project) == before


@pytest.mark.parametrize("args, message", [
    (["--from", "2026-03-11T00:00:00Z", "--to", "2026-03-10T00:00:00Z"],
     "--from (2026-03-11T00:00:00+00:00) is after --to"),
    (["--journey", "crat", "--from", "2026-03-10", "--to", "2026-03-11"], "no journey named 'crat'"),
    (["--from", "yesterday", "--to", "2026-03-11"], "--from:"),
    (["--from", "2026-03-10", "--to", "2026-03-11", "--events", "missing.jsonl"],
     "--events: missing.jsonl: no such file"),
])
def test_bad_options_are_one_clear_error(monkeypatch, capsys, project, args, message):
    monkeypatch.chdir(project)
    code, out, err = nurture(monkeypatch, capsys, project, "simulate", *args)
    assert code != 0 and message in err and out == ""


def test_a_bad_events_row_stops_the_simulation_naming_its_line(monkeypatch, capsys, project):
    path = project / "events.jsonl"
    path.write_text(json.dumps({"event_id": "e1", "email": "ann@example.com", "event": "add_to_cart",
                                "timestamp": "2026-03-10T10:00:00Z"}) + "\n"
                    + json.dumps({"event_id": "e2", "email": "ann@example.com", "event": "add_to_cart",
                                  "timestamp": "not a time"}) + "\n"
                    + json.dumps({"event_id": "e3", "email": "not-an-address", "event": "add_to_cart",
                                  "timestamp": "2026-03-10T10:00:00Z"}) + "\n", encoding="utf-8")
    code, out, err = nurture(monkeypatch, capsys, project, "simulate", "--from", "2026-03-10", "--to", "2026-03-11",
                             "--events", str(path))
    assert code != 0 and out == ""
    assert "events.jsonl:2: timestamp:" in err and "events.jsonl: 1 bad row(s); nothing was simulated" in err
    path.write_text(path.read_text().splitlines()[0] + "\n" + path.read_text().splitlines()[2] + "\n")
    code, out, err = nurture(monkeypatch, capsys, project, "simulate", "--from", "2026-03-10", "--to", "2026-03-11",
                             "--events", str(path))
    assert code != 0 and "events.jsonl:2: email:" in err


def test_a_bad_contacts_row_stops_the_simulation(monkeypatch, capsys, project):
    (project / "bad.csv").write_text("email,timezone\nnot-an-address,Europe/Berlin\n", encoding="utf-8")
    code, out, err = nurture(monkeypatch, capsys, project, "simulate", "--from", "2026-03-10", "--to", "2026-03-11",
                             "--contacts", str(project / "bad.csv"))
    assert code != 0 and "bad.csv:2: email" in err and "nothing was simulated" in err


def test_a_birthday_mail_leaves_at_0900_in_each_contacts_zone(monkeypatch, capsys, tmp_path, sqlite_template):
    pytest.importorskip("nurture.date_occurrences")
    root = write_project(tmp_path / "shop", {"birthday": """
        name: birthday
        trigger: {date: birthday, at: "09:00", every: year}
        steps:
          - id: card
            send: {channel: email, template: hello, subject: "Happy birthday"}
        """})
    (root / ".nurture").mkdir()
    shutil.copyfile(sqlite_template, root / ".nurture" / "nurture.db")
    (root / "contacts.csv").write_text("email,timezone,birthday,consent_email\n"
                                       "ann@example.com,Europe/Berlin,1990-03-10,granted\n"
                                       "kim@example.com,Asia/Kathmandu,1985-03-10,granted\n", encoding="utf-8")
    result = simulate_json(monkeypatch, capsys, root, "--from", "2026-03-09T12:17:00Z", "--to", "2026-03-11T00:00:00Z",
                           "--contacts", str(root / "contacts.csv"))
    assert [(r["contact"], r["at"], r["local_time"]) for r in result["timeline"] if r["outcome"] == "sent"] == [
        ("ann@example.com", "2026-03-10T08:00:00+00:00", "2026-03-10T09:00:00+01:00"),
        ("kim@example.com", "2026-03-10T03:15:00+00:00", "2026-03-10T09:00:00+05:45")]


def test_the_scratch_copy_commits_without_syncing_and_the_project_store_keeps_its_setting(tmp_path):
    # A scratch database is thrown away: no commit of a simulation waits for the disk. The
    # project's own store keeps synchronous=NORMAL (1).
    from sqlalchemy import text

    from nurture.scratch import open_scratch
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    store = open_store(url)
    scratch = open_scratch(url)
    try:
        with scratch.store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 0
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1
    finally:
        scratch.close()
        store.dispose()


# ---------------------------------------------------------------- the database's own events

WELCOME = journey_yaml("welcome", "- {id: hello, send: {channel: email, template: hello, subject: Hi}}",
                       trigger="{event: signup, lookback: 2d}")
REMIND = journey_yaml("remind", "- {id: wait_3h, wait: 3h}\n"
                                "- {id: reminder, send: {channel: email, template: hello, subject: Back}}",
                      trigger="{event: add_to_cart, lookback: 2d}", extra="exit_when: [{event: purchase}]")


def sim_timeline(result, journey: str) -> list[tuple]:
    return [(r["contact"], r["kind"], r["outcome"], r["reason"], r["at"]) for r in result.timeline
            if r["journey"] == journey]


def test_trigger_events_the_database_holds_inside_a_past_period_enroll_and_send_at_their_time(make_runtime, store):
    # The README's example simulates a past month: its signups are in the database already. At
    # --from they lie in the future (the engine parks them as pending triggers); each must wake
    # the journey at its own time, as an events file's signup does — not at --to, too late for
    # the trigger's lookback.
    rt = make_runtime({"welcome": WELCOME})
    for i in range(5):  # Nov 2, 6, 10, 14, 18 at 10:00 UTC
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", utc(2026, 11, 2 + 4 * i, 10))
    result = simulate(rt, ["welcome"], utc(2026, 11, 1), utc(2026, 12, 1))
    assert [row for row in sim_timeline(result, "welcome") if row[1] == "send"] == [
        (f"p{i}@example.com", "send", "sent", "", f"2026-11-{2 + 4 * i:02d}T10:00:00+00:00") for i in range(5)]
    assert result.ticks_by_journey["welcome"] == 7  # the start, each signup, the end


def test_an_exit_event_the_database_holds_ends_the_enrollment_at_its_moment(make_runtime, store):
    rt = make_runtime({"remind": REMIND})
    ann, bob = subscriber(store, "ann@example.com"), subscriber(store, "bob@example.com")
    add_event(store, ann, "add_to_cart", utc(2026, 3, 10, 10))
    add_event(store, ann, "purchase", utc(2026, 3, 10, 11))
    add_event(store, bob, "add_to_cart", utc(2026, 3, 10, 10))
    result = simulate(rt, ["remind"], utc(2026, 3, 10, 9), utc(2026, 3, 10, 14))
    assert sim_timeline(result, "remind") == [
        ("ann@example.com", "enrolled", "enrolled", "", "2026-03-10T10:00:00+00:00"),
        ("ann@example.com", "left", "exited", "exit_when", "2026-03-10T11:00:00+00:00"),
        ("bob@example.com", "enrolled", "enrolled", "", "2026-03-10T10:00:00+00:00"),
        ("bob@example.com", "send", "sent", "", "2026-03-10T13:00:00+00:00"),
        ("bob@example.com", "left", "completed", "", "2026-03-10T13:00:00+00:00")]


# ---------------------------------------------------------------- coalescing, across journeys

# `a` (first in tick-all's order) allows one e-mail a day; `b` has no cap of its own. Both have
# a send for ann due at 11:00:00; `a` has one for bob at 10:58.
CAPPED_A = journey_yaml("a", "- {id: w, wait: 1h}\n- {id: mail_a, send: {channel: email, template: hello, subject: A}}",
                        trigger="{event: ev_a}", extra="frequency_cap: [{channel: email, max: 1, per: 1d}]")
UNCAPPED_B = journey_yaml("b", "- {id: w, wait: 1h}\n"
                               "- {id: mail_b, send: {channel: email, template: other, subject: B}}",
                          trigger="{event: ev_b}")
ELEVEN = utc(2026, 3, 4, 11)
TWO_JOURNEYS_EVENTS = [("bob@example.com", "ev_a", (ELEVEN - timedelta(hours=1, minutes=2)).isoformat()),
                       ("ann@example.com", "ev_a", (ELEVEN - timedelta(hours=1)).isoformat()),
                       ("ann@example.com", "ev_b", (ELEVEN - timedelta(hours=1)).isoformat())]


def _sends(store) -> list[tuple]:
    m = message_t.c
    with store.engine.connect() as conn:
        return sorted(conn.execute(select(contact_t.c.email, m.step_id, m.status, m.reason)
                                   .join(contact_t, contact_t.c.id == m.contact_id)).all())


def test_coalesced_ticks_keep_tick_alls_order_across_journeys(make_runtime, store, tmp_path):
    # The deployed 5-minute tick-all ticks `a` then `b` at 11:00: ann's mail_a leaves, then
    # mail_b. A simulation must not tick `b` alone at 11:00 because `a` ticked at 10:58 (bob):
    # b's send would count against a's cap and defer ann's mail_a to the next day.
    rt = make_runtime({"a": CAPPED_A, "b": UNCAPPED_B})
    subscriber(store, "ann@example.com"), subscriber(store, "bob@example.com")
    feed = EventFeed.read(write_events(tmp_path, *TWO_JOURNEYS_EVENTS))
    result = simulate(rt, ["a", "b"], ELEVEN - timedelta(hours=1, minutes=5), ELEVEN + timedelta(minutes=30), feed=feed)
    assert _sends(store) == [("ann@example.com", "mail_a", "sent", None), ("ann@example.com", "mail_b", "sent", None),
                             ("bob@example.com", "mail_a", "sent", None)]
    # At most one resolution late: bob's at 10:58 exactly, ann's two at the next moment, 11:03.
    assert sorted((r["contact"], r["step"], r["at"]) for r in result.timeline if r["outcome"] == "sent") == [
        ("ann@example.com", "mail_a", "2026-03-04T11:03:00+00:00"),
        ("ann@example.com", "mail_b", "2026-03-04T11:03:00+00:00"),
        ("bob@example.com", "mail_a", "2026-03-04T10:58:00+00:00")]


# ---------------------------------------------------------------- simulate = real ticks

def test_simulating_two_shipped_journeys_does_what_5_minute_ticks_do(tmp_path, sqlite_template):
    # A small seeded shop (contacts in three whole-hour zones; product views, carts, some
    # purchases) over three days, once simulated and once by real ticks of tick-all every 5
    # minutes. Half the events are in the database from the start (a past period), half are
    # tracked as they happen. browse_abandonment and cart_abandonment share the contacts' caps:
    # which send leaves first matters. Every event lies on the 5-minute grid, so every due time
    # (waits, quiet hours' 08:00, a cap's release) does too: the two runs must agree on every
    # message, every enrollment and every instant.
    import random

    from nurture.ingest import track_records
    from nurture.runtime import Runtime, run_tick
    from nurture.spec.project import load_project
    from nurture.store.tables import enrollment_t
    from tests.conftest import REPO
    from tests.engine_fixtures import add_contact, set_consent

    start, days, grid = utc(2026, 11, 2), 3, timedelta(minutes=5)
    spec = load_project(REPO)
    journeys = [j for j in spec.journey_names if j in ("browse_abandonment", "cart_abandonment")]  # tick-all's order
    rnd = random.Random(11)
    rows = []
    for i in range(40):
        email, at = f"c{i}@example.com", start + grid * rnd.randrange(int(days * 0.7 * 288))
        rows.append((f"view{i}", email, "view_product", {"sku": "A1", "product_name": "Shoe"}, at))
        if rnd.random() < 0.7:
            at += grid * rnd.randrange(1, 100)
            rows.append((f"cart{i}", email, "add_to_cart", {"cart_value": rnd.choice([15, 40, 120])}, at))
        if rnd.random() < 0.3:
            rows.append((f"buy{i}", email, "purchase", {"value": 80}, at + grid * rnd.randrange(1, 700)))
    end = start + timedelta(days=days)
    rows = sorted((r for r in rows if r[4] <= end), key=lambda r: (r[4], r[0]))
    stored, tracked = rows[::2], rows[1::2]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"event_id": key, "email": email, "event": name, "properties": properties,
                                          "timestamp": at.isoformat()}) + "\n"
                              for key, email, name, properties, at in tracked), encoding="utf-8")

    def shop(name: str) -> Runtime:
        shutil.copyfile(sqlite_template, tmp_path / f"{name}.db")
        store = open_store(f"sqlite:///{tmp_path / f'{name}.db'}")
        r, ids = random.Random(5), {}
        for i in range(40):
            ids[f"c{i}@example.com"] = cid = add_contact(
                store, f"c{i}@example.com", first_name=f"N{i}",
                timezone=r.choice(["Europe/Berlin", "America/New_York", "UTC"]))
            set_consent(store, cid, "email")
            if r.random() < 0.5:
                set_consent(store, cid, "sms")
            add_event(store, cid, "email_open", start - timedelta(days=20))  # engaged: not sunset
        for key, email, event, properties, at in stored:
            add_event(store, ids[email], event, at, properties, event_id=key)
        return Runtime(store, spec, env={"NURTURE_DATA_DIR": str(tmp_path / name),
                                         "NURTURE_FROM_EMAIL": "shop@example.com"})

    def what_happened(rt: Runtime) -> tuple[list, list]:
        m, e = message_t.c, enrollment_t.c
        with rt.store.engine.connect() as conn:
            sent = sorted(tuple(map(str, row)) for row in conn.execute(
                select(contact_t.c.email, m.journey, m.step_id, m.status, m.reason, m.due_at, m.sent_at)
                .join(contact_t, contact_t.c.id == m.contact_id)))
            enrolled = sorted(tuple(map(str, row)) for row in conn.execute(
                select(contact_t.c.email, e.journey, e.status, e.exit_reason, e.holdout, e.entered_at, e.left_at)
                .join(contact_t, contact_t.c.id == e.contact_id)))
        return sent, enrolled

    simulated = shop("simulated")
    simulate(simulated, journeys, start, end, feed=EventFeed.read(events), timeline=False)
    ticked = shop("ticked")
    feed, clock = EventFeed.read(events), start
    while clock <= end:
        batch = feed.take_until(clock)
        if batch:
            track_records(ticked.store, batch, source=feed.name, now=clock)
        for journey in journeys:
            run_tick(ticked, journey, clock)
        clock += grid
    outcome = what_happened(simulated)
    assert outcome == what_happened(ticked)
    steps = {(journey, step, status) for _, journey, step, status, *_ in outcome[0]}
    # the comparison covers waits, a split, branches, quiet hours, frequency caps
    assert {("cart_abandonment", "reminder", "sent"), ("cart_abandonment", "incentive", "sent"),
            ("cart_abandonment", "last_call", "sent"), ("cart_abandonment", "reminder", "deferred"),
            ("browse_abandonment", "browse_reminder", "sent")} <= steps, steps
    assert any(reason == "frequency_cap" for _, _, _, _, reason, *_ in outcome[0])
    assert {s for _, _, s, *_ in outcome[1]} >= {"completed", "converted", "exited", "active"}
    for rt in (simulated, ticked):
        rt.close()
        rt.store.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_scratch_copy_of_postgresql_hands_out_no_id_the_source_handed_out_before(store, db_url):
    """PostgreSQL never hands a deleted id out again (a purged event, a purged contact), and
    other tables may still hold one; the SQLite copy a `plan` or `simulate` runs on went on from
    its highest row instead, so a simulated purchase could take a purged one's id."""
    from nurture.scratch import open_scratch
    from nurture.store.tables import contact_t, event_t
    from tests.engine_fixtures import add_contact, add_event
    keep = add_contact(store, "keep@example.com")
    gone = add_contact(store, "gone@example.com")
    add_event(store, keep, "signup", utc(2026, 1, 1))
    purged_event = add_event(store, gone, "purchase", utc(2026, 1, 2))
    with store.engine.begin() as conn:
        conn.execute(event_t.delete().where(event_t.c.contact_id == gone))
        conn.execute(contact_t.delete().where(contact_t.c.id == gone))
    scratch = open_scratch(db_url)
    try:
        with scratch.store.engine.begin() as conn:
            new_contact = conn.execute(contact_t.insert().values(
                email="new@example.com", created_at=utc(2026, 2, 1), updated_at=utc(2026, 2, 1),
                attributes={})).inserted_primary_key[0]
        new_event = add_event(scratch.store, new_contact, "purchase", utc(2026, 2, 1))
    finally:
        scratch.close()
    assert new_contact > gone and new_event > purged_event
