"""Large ticks deliver in several processes, pipelined with the advance stage: every message
still goes out exactly once and every outcome is recorded."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.runtime import run_tick
from nurture.runtime import tick
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)


def test_a_pipelined_tick_with_two_delivery_processes_sends_each_message_once(make_runtime, store, monkeypatch):
    monkeypatch.setattr(tick, "LARGE_TICK", 1)  # 300 due count as large: really pipelined
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    rt.batch_size = 40  # many small batches, so delivery really runs while advance still queues
    for i in range(300):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    report = run_tick(rt, "j", T0 + timedelta(minutes=1), workers=2)
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 300 and len({m.contact_id for m in sent}) == 300
    files = list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))
    assert len(files) == 300
    assert sum(n for (step, status, _), n in report.outcomes.items() if status == "sent") == 300
    assert run_tick(rt, "j", T0 + timedelta(minutes=2), workers=2).outcomes.get(("hello", "sent", None)) is None


def test_a_second_delivery_worker_skips_the_messages_another_is_claiming_and_does_not_wait(make_runtime, store):
    """PostgreSQL: two workers delivering the same journey (partitions, or two ticks) claim the
    queue with FOR UPDATE SKIP LOCKED. While one worker's claim transaction is open, another
    claims none of its messages — it neither waits for it nor, once it commits, takes the same
    messages again. (SQLite's write transaction is exclusive: no row locks to test.)"""
    import threading
    from collections import Counter

    from sqlalchemy import text

    from nurture.runtime.tick import STAGES, StageCall, TickOptions
    from nurture.send.deliver import _claim_in
    if not store.is_postgres:
        pytest.skip("row locks: PostgreSQL only")
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    for i in range(5):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    for stage in STAGES:  # a tick with delivery partitions queues them; its deliver stage is what we play
        if stage.name == "deliver":
            break
        stage.run(StageCall(rt, "j", T0 + timedelta(minutes=1), TickOptions(partitions=2)))
    now = T0 + timedelta(minutes=2)
    theirs: list = []

    def second_worker() -> None:
        with store.engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            theirs.extend(_claim_in(conn, rt, now, "j", 0, 1, Counter()))

    with store.engine.begin() as conn:
        mine = _claim_in(conn, rt, now, "j", 0, 1, Counter())
        worker = threading.Thread(target=second_worker)
        worker.start()
        worker.join(5)
        waited = worker.is_alive()
    worker.join(30)
    assert len(mine) == 5
    assert (waited, sorted(set(mine) & set(theirs))) == (False, [])
