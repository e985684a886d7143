"""`nurture plan`: what the next tick would do now — decided by the tick's own stages on a
scratch copy, so the plan is what the tick then does, and nothing of the project changes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nurture.runtime import Runtime
from nurture.runtime.tick import run_tick
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import enrollment_t, message_t
from tests.cli_inproc import run_cli
from tests.conftest import write_project
from tests.engine_fixtures import add_contact, add_event, set_consent

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)  # 13:00 in Berlin, 21:00 in Tokyo
WELCOME = """
name: welcome
trigger: {event: signup, lookback: 2d}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome"}
  - id: later
    wait: 3d
"""
PROMO = """
name: promo
trigger: {event: signup, lookback: 2d}
holdout: 40%
steps:
  - id: offer
    send: {channel: email, template: other, subject: "An offer"}
"""
IDLE = """
name: idle
trigger: {event: never_happens}
steps:
  - id: nothing
    send: {channel: email, template: hello, subject: "-"}
"""


@pytest.fixture
def project(tmp_path, sqlite_template) -> Path:
    """A project whose database holds signups of the last days, none of them enrolled yet:
    the journeys are new, so their first tick backfills over the trigger's lookback."""
    root = write_project(tmp_path / "shop", {"welcome": WELCOME, "promo": PROMO, "idle": IDLE})
    (root / ".nurture").mkdir()
    shutil.copyfile(sqlite_template, root / ".nurture" / "nurture.db")
    store = open_store(db_url(root))
    people = [("ann@example.com", "Europe/Berlin", True, timedelta(days=1)),
              ("bob@example.com", "Europe/Berlin", False, timedelta(hours=1)),  # no consent
              ("kim@example.com", "Asia/Tokyo", True, timedelta(hours=2)),  # 21:00 there: quiet hours
              (None, "Europe/Berlin", True, timedelta(hours=3)),  # no address
              ("old@example.com", "Europe/Berlin", True, timedelta(days=3))]  # before the lookback
    people += [(f"c{i}@example.com", "Europe/Berlin", True, timedelta(minutes=i + 1)) for i in range(8)]
    for email, tz, consent, ago in people:
        cid = add_contact(store, email, timezone=tz, first_name="Pat")
        if consent:
            set_consent(store, cid)
        add_event(store, cid, "signup", NOW - ago)
    store.dispose()
    return root


def db_url(root: Path) -> str:
    return f"sqlite:///{root / '.nurture' / 'nurture.db'}"


def nurture(monkeypatch, capsys, root: Path, *args: str) -> tuple[int, str, str]:
    """`nurture ARGS` in this process (tests/cli_inproc: exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NURTURE_DATABASE_URL", "NURTURE_DATA_DIR",
                                                            "NURTURE_DEBUG", "NURTURE_EMAIL_BACKEND")}
    proc = run_cli(list(args), {**env, "NURTURE_PROJECT": str(root), "COLUMNS": "200"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def fingerprint(root: Path) -> tuple[dict, tuple]:
    """Hashes of every file of the data directory, and the engine's row counts."""
    data = root / ".nurture"
    files = {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(data.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    store = open_store(db_url(root))
    with store.reading() as conn:
        counts = tuple(conn.execute(select(func.count()).select_from(t)).scalar() for t in (enrollment_t, message_t))
    store.dispose()
    return files, counts


def test_plan_shows_a_new_journeys_backfill_and_changes_nothing(monkeypatch, capsys, project):
    before = fingerprint(project)
    code, out, err = nurture(monkeypatch, capsys, project, "plan", "--journey", "welcome", "--now", NOW.isoformat(),
                             "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["journeys"] == [{
        "journey": "welcome", "now": NOW.isoformat(), "would_enroll": 12, "would_exit": 0, "would_convert": 0,
        "would_migrate": 0,
        "steps": [{"step": "hello", "would_send": 9, "would_defer": {"quiet_hours": 1},
                   "would_suppress": {"no_consent": 1}, "would_skip": {"no_email": 1}, "would_hold_out": 0,
                   "already_queued": 0, "moves": {}}]}]
    assert fingerprint(project) == before
    assert before[1] == (0, 0)
    assert not (project / ".nurture" / "outbox").exists()


def test_the_plan_is_what_the_tick_then_does(monkeypatch, capsys, project):
    code, out, err = nurture(monkeypatch, capsys, project, "plan", "--now", NOW.isoformat(), "--json")
    assert code == 0, err
    planned = {j["journey"]: j for j in json.loads(out)["journeys"]}
    assert list(planned) == ["idle", "promo", "welcome"]  # tick-all's order
    assert planned["idle"]["would_enroll"] == 0 and planned["idle"]["steps"] == []
    # Now the real tick, on the project's own database.
    spec = load_project(project)
    store = open_store(db_url(project))
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(project / ".nurture")})
    try:
        reports = {name: run_tick(rt, name, NOW) for name in spec.journey_names}
    finally:
        rt.close()
    with store.reading() as conn:
        log = Counter((j, s, st, r) for j, s, st, r in conn.execute(
            select(message_t.c.journey, message_t.c.step_id, message_t.c.status, message_t.c.reason)))
    store.dispose()
    promo = planned["promo"]["steps"][0]
    assert promo["would_hold_out"] > 0 and promo["would_send"] > 0
    for name, journey in planned.items():
        assert journey["would_enroll"] == reports[name].stages["enrolled"]
        for step in journey["steps"]:
            decided = Counter({("sent", None): step["would_send"], ("holdout", "holdout"): step["would_hold_out"]})
            for key, status in (("would_defer", "deferred"), ("would_suppress", "suppressed"),
                                ("would_skip", "skipped")):
                decided.update({(status, reason): n for reason, n in step[key].items()})
            logged = Counter({(st, r): n for (j, s, st, r), n in log.items() if (j, s) == (name, step["step"])})
            assert +decided == logged


def test_plan_prints_a_table_per_journey_with_something_to_do_and_one_line_otherwise(monkeypatch, capsys, project):
    code, out, err = nurture(monkeypatch, capsys, project, "plan", "--now", NOW.isoformat())
    assert code == 0, err
    assert "journey idle: would enroll 0; no step is due" in out
    assert "journey welcome: would enroll 12" in out
    assert "quiet_hours 1" in out and "no_consent 1" in out and "no_email 1" in out
    assert out.count("┏") == 2  # two tables (promo, welcome): none for idle


def test_plan_of_an_unknown_journey_is_one_clear_error(monkeypatch, capsys, project):
    code, out, err = nurture(monkeypatch, capsys, project, "plan", "--journey", "welcom", "--json")
    assert code == 1 and out == ""
    assert "no journey named 'welcom'" in err and "did you mean 'welcome'?" in err


def test_a_plan_delivers_nothing_even_when_the_tick_would_hand_its_messages_over(monkeypatch, capsys, project):
    """A tick hands each batch to delivery as it commits; the plan runs the same advance
    stage and must still only decide: nothing rendered or handed to a channel, even the
    scratch copy's file channel, and the same counts."""
    handed = []
    from nurture.send import deliver as deliver_module
    real_send = deliver_module._Delivery.send
    monkeypatch.setattr(deliver_module._Delivery, "send", lambda self, rows: handed.append(len(rows)) or
                        real_send(self, rows))
    code, out, err = nurture(monkeypatch, capsys, project, "plan", "--journey", "welcome", "--now", NOW.isoformat(),
                             "--json")
    assert code == 0, err
    step = json.loads(out)["journeys"][0]["steps"][0]
    assert (step["would_send"], step["already_queued"]) == (9, 0)
    assert handed == []
