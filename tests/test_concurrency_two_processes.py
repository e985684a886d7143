"""Specification: two OS processes ticking at the same logical time — the same journey, or
different journeys over the same contacts — never double-send and never exceed a frequency cap.
Each process opens its own store on the same SQLite file / the same PostgreSQL database and
writes to the same outbox folder; small batches make their work interleave."""
from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from tests.conftest import utc
from tests.engine_fixtures import add_subscribers, journey_yaml, messages
from nurture.store.tables import message_t

T0 = utc(2026, 3, 4, 10, 0)
CONTACTS = 150
POLICIES = """
timezone: UTC
quiet_hours: {}
frequency_caps:
  - {channel: email, max: 2, per: 1d}
on_cap: defer
double_opt_in: {}
"""


def mail(step_id: str) -> str:
    return f"- id: {step_id}\n  send: {{channel: email, template: hello, subject: Hi}}"


JOURNEYS = {
    "one": journey_yaml("one", mail("mail_1") + "\n" + mail("mail_2")),
    "two": journey_yaml("two", mail("mail_3")),
}


def tick_worker(project_root: str, db_url: str, journeys: list[str], now_iso: str, barrier) -> None:
    """Runs in a spawned process: its own store, runtime and channels."""
    from nurture.runtime import Runtime, run_tick
    from nurture.spec.project import load_project
    from nurture.store.db import open_store

    store = open_store(db_url)
    spec = load_project(project_root)
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": f"{project_root}/.nurture"}, batch_size=25)
    now = datetime.fromisoformat(now_iso)
    barrier.wait(timeout=120)
    for journey in journeys:
        run_tick(rt, journey, now)
    rt.close()
    store.dispose()


def run_two_processes(root, db_url, first: list[str], second: list[str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    now = (T0 + timedelta(minutes=1)).isoformat()
    procs = [ctx.Process(target=tick_worker, args=(str(root), db_url, journeys, now, barrier))
             for journeys in (first, second)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.fixture
def audience(make_project, store):
    root = make_project(JOURNEYS, policies=POLICIES)
    return root, add_subscribers(store, CONTACTS, event="signup", at=T0)


def sent_per_contact(store) -> Counter:
    with store.engine.connect() as conn:
        rows = conn.execute(select(message_t.c.contact_id, func.count())
                            .where(message_t.c.status == "sent").group_by(message_t.c.contact_id)).all()
        conn.rollback()
    return Counter(dict(rows))


def eml_count(root) -> int:
    return len(list((root / ".nurture" / "outbox" / "email").rglob("*.eml")))


def test_two_processes_ticking_the_same_journey_send_each_message_once(audience, store, db_url):
    root, ids = audience
    run_two_processes(root, db_url, ["one"], ["one"])
    sends = Counter((m.enrollment_id, m.step_id) for m in messages(store) if m.attempt_key == "send")
    assert set(sends.values()) == {1}
    assert len(sends) == 2 * CONTACTS
    assert {m.status for m in messages(store)} == {"sent"}
    assert sent_per_contact(store) == Counter({cid: 2 for cid in ids})
    assert eml_count(root) == 2 * CONTACTS


def test_two_processes_ticking_different_journeys_never_exceed_the_cap(audience, store, db_url):
    """One process ticks `one` then `two`, the other `two` then `one`: at every moment the two
    run different journeys over the same contacts (and, at the end, the same one)."""
    root, ids = audience
    run_two_processes(root, db_url, ["one", "two"], ["two", "one"])
    # three e-mails are due for every contact, the cap allows two a day: exactly two go out
    assert sent_per_contact(store) == Counter({cid: 2 for cid in ids})
    assert eml_count(root) == 2 * CONTACTS
    others = Counter((m.status, m.reason) for m in messages(store) if m.status != "sent")
    assert others == Counter({("deferred", "frequency_cap"): CONTACTS})
    sends = Counter((m.enrollment_id, m.step_id, m.attempt_key) for m in messages(store))
    assert set(sends.values()) == {1}
