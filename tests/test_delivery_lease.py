"""Delivery leases (nurture.send.lease): a message a live run marked `sending` is that run's,
however long its channel takes; reconcile only takes over what a dead run left."""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from typing import Sequence

import pytest
from sqlalchemy import select, update

from integrations.file_channels import FileEmailChannel
from nurture.registry import Channel, DeliveryResult, IntegrationContext, OutgoingMessage
from nurture.runtime import run_tick
from nurture.runtime import tick as tick_module
from nurture.send import lease as lease_module
from nurture.send.deliver import _Delivery, deliver
from nurture.send.handoff import Handoff
from nurture.send.lease import LEASE_TTL, Lease, LeaseLost, held_tokens, process_started, wall_now
from nurture.send.reconcile import STUCK_AFTER, reconcile_stuck
from nurture.store.tables import lease_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, message_t, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)
NOW = T0 + timedelta(minutes=1)
LATER = NOW + STUCK_AFTER + timedelta(minutes=5)  # another tick, long after the claim
STEP = "- id: hello\n  send: {channel: email, template: hello, subject: Hi}\n- id: later\n  wait: 30d"


class SlowChannel(Channel):
    """The file channel, held at its first batch until the test lets it go (a relay taking its time)."""
    name = "test.slow"
    channel = "email"
    local = True

    def __init__(self, inner: Channel):
        self.inner = inner
        self.entered, self.go = threading.Event(), threading.Event()
        self.delivered: list[int] = []

    @classmethod
    def from_env(cls, context):  # pragma: no cover - built directly
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.entered.set()
        assert self.go.wait(30)
        self.delivered.extend(m.message_pk for m in messages)
        return self.inner.send_batch(messages)

    def was_delivered(self, message_pk: int, rfc_message_id: str):
        return self.inner.was_delivered(message_pk, rfc_message_id)


def leases(store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(select(lease_t)).all()


def slow_runtime(make_runtime, store, contacts: int = 2):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    inner = FileEmailChannel.from_env(IntegrationContext(rt.project.root, rt.data_dir, rt.env))
    slow = SlowChannel(inner)
    rt.channel_factory = lambda name: slow
    for i in range(contacts):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    return rt, slow


def another_worker(make_runtime):
    """A second worker of the same project: its own runtime, the channel as configured (file)."""
    return make_runtime({"j": journey_yaml("j", STEP)})


@pytest.mark.parametrize("path", ["handed", "claimed"])
def test_a_slow_run_keeps_its_messages_while_another_tick_reconciles_long_after_the_claim(
        make_runtime, store, path):
    """The hole this closes: the run's messages wait for a slow channel past STUCK_AFTER; the
    channel has not seen them, so another tick's reconcile re-queued them and its delivery sent
    them — and then the slow run did too (fails without leases: each message sent twice)."""
    rt, slow = slow_runtime(make_runtime, store)
    if path == "claimed":  # queued by a tick that does not hand over (`nurture plan`'s way), then claimed
        run_tick_without_handoff(rt)
        work = lambda: deliver(rt, NOW, "j")  # noqa: E731
    else:
        work = lambda: run_tick(rt, "j", NOW)  # noqa: E731
    done: dict = {}
    runner = threading.Thread(target=lambda: done.setdefault("report", work()))
    runner.start()
    try:
        assert slow.entered.wait(30)
        (lease,) = leases(store)
        assert {m.claim for m in messages(store)} == {lease.token}
        other = another_worker(make_runtime)
        assert reconcile_stuck(other, LATER) == {}  # the run is alive: its messages are its own
        assert deliver(other, LATER, "j") == {}
        assert [m.status for m in messages(store)] == ["sending", "sending"]
    finally:
        slow.go.set()
        runner.join(30)
    assert sorted(m.status for m in messages(store) if m.step_id == "hello") == ["sent", "sent"]
    assert len(slow.delivered) == 2 and len(set(slow.delivered)) == 2
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 2
    assert leases(store) == []  # released when the run ended


def run_tick_without_handoff(rt) -> None:
    from nurture.runtime.tick import STAGES, StageCall, TickOptions
    options = TickOptions(hand_off=False)
    for stage in STAGES:
        if stage.name in ("prepare", "enroll", "exit-convert", "advance"):
            stage.run(StageCall(rt, "j", NOW, options))
    assert [m.status for m in messages(rt.store)] == ["queued", "queued"]


def crashed_run(make_runtime, store):
    """A run that handed its messages `sending` and crashed before its channel saw them,
    leaving its lease behind (a kill skips every `finally`)."""
    rt, slow = slow_runtime(make_runtime, store)
    released = Lease.release
    try:
        Lease.release = lambda self: lease_module._beater.discard(self)  # the kill: nothing released
        slow.go.set()
        slow.send_batch = lambda batch: (_ for _ in ()).throw(KeyboardInterrupt())  # dies in the channel
        with pytest.raises(KeyboardInterrupt):
            run_tick(rt, "j", NOW)
    finally:
        Lease.release = released
    (lease,) = leases(store)
    assert [m.status for m in messages(store)] == ["sending", "sending"]
    return lease


def dead_process() -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_started(proc.pid)
    proc.wait()
    return proc.pid, started


def test_the_lease_of_a_killed_process_on_this_machine_is_not_held(make_runtime, store):
    lease = crashed_run(make_runtime, store)
    pid, started = dead_process()
    with store.engine.begin() as conn:
        conn.execute(update(lease_t).where(lease_t.c.token == lease.token).values(pid=pid, started=started))
    other = another_worker(make_runtime)
    assert reconcile_stuck(other, LATER) == {"queued": 2}  # at once: the process is gone, its beat is not stale
    assert leases(store) == []  # forgotten with it
    assert deliver(other, LATER, "j")[("hello", "sent", None)] == 2


def test_a_reused_pid_does_not_keep_a_dead_run_alive(make_runtime, store):
    lease = crashed_run(make_runtime, store)
    assert lease.pid == __import__("os").getpid()  # this very process: alive
    with store.engine.begin() as conn:  # ... but not the one that started when the lease was taken
        conn.execute(update(lease_t).values(started=(lease.started or 0) + 1))
    with store.engine.connect() as conn:
        assert held_tokens(conn, [lease.token]) == set()


def test_a_run_on_another_machine_is_held_while_it_beats_and_not_after(make_runtime, store):
    lease = crashed_run(make_runtime, store)
    with store.engine.begin() as conn:
        conn.execute(update(lease_t).values(host="worker-7", pid=1, started=None, beat_at=wall_now()))
    other = another_worker(make_runtime)
    assert reconcile_stuck(other, LATER) == {}
    with store.engine.begin() as conn:
        conn.execute(update(lease_t).values(beat_at=wall_now() - LEASE_TTL - timedelta(seconds=1)))
    assert reconcile_stuck(other, LATER) == {"queued": 2}
    assert leases(store) == []
    del lease


def test_a_process_renews_its_leases_and_a_lease_it_cannot_renew_stops_its_run(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    held = Lease(rt.store, "a" * 32)
    with held:
        with store.engine.begin() as conn:
            held.take(conn)
            held.take(conn)  # again: written once per run
        with store.engine.begin() as conn:
            conn.execute(update(lease_t).values(beat_at=T0))  # a beat long ago
        lease_module._beater.beat()
        ((token, beat_at),) = [(r.token, r.beat_at) for r in leases(store)]
        assert token == held.token and beat_at > wall_now() - timedelta(minutes=1)
        run = _Delivery(rt, NOW, held)
        held.renewal.value -= LEASE_TTL.total_seconds()  # the database unreachable for that long
        with pytest.raises(LeaseLost):
            run.send([])
    assert leases(store) == []


def test_a_pipelined_tick_holds_its_token_while_it_runs_and_releases_it(make_runtime, store, monkeypatch):
    monkeypatch.setattr(tick_module, "LARGE_TICK", 1)
    seen: list = []
    publish = Handoff.publish

    def watched(self, journey, step_id, rows, here=None):
        seen.append((self.token, [r.token for r in leases(store)]))
        publish(self, journey, step_id, rows, here=here)
    monkeypatch.setattr(Handoff, "publish", watched)
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(5):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    run_tick(rt, "j", NOW, workers=2)
    assert seen and all(held == [token] for token, held in seen)
    assert leases(store) == []
    assert [m.status for m in messages(store)] == ["sent"] * 5


def test_messages_without_a_lease_are_reconciled_as_before(make_runtime, store):
    """Claimed before leases existed, or by a run whose lease was released while a delivery
    process of it died holding them: STUCK_AFTER, then the channel is asked."""
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    cid = subscriber(store, "ann@example.com")
    with store.engine.begin() as conn:
        conn.execute(message_t.insert().values(contact_id=cid, journey="j", step_id="hello", attempt_key="send",
                                               channel="email", template="hello", address="ann@example.com",
                                               status="sending", claim="f" * 32, claimed_at=NOW, due_at=NOW,
                                               created_at=NOW, attempts=1))
    assert reconcile_stuck(rt, NOW + STUCK_AFTER - timedelta(minutes=1)) == {}
    assert reconcile_stuck(rt, LATER) == {"queued": 1}


def test_a_lease_left_by_a_run_killed_after_its_last_record_is_forgotten_after_a_day(make_runtime, store):
    lease = crashed_run(make_runtime, store)
    with store.engine.begin() as conn:
        conn.execute(lease_t.insert().values(token="0" * 32, host=lease.host, boot=lease.boot, pid=lease.pid,
                                             started=lease.started, taken_at=T0,
                                             beat_at=wall_now() - timedelta(days=1, minutes=1)))
        conn.execute(update(lease_t).where(lease_t.c.token == lease.token).values(host="worker-7"))
    assert len(leases(store)) == 2
    assert reconcile_stuck(another_worker(make_runtime), LATER) == {}  # the crashed run's lease is fresh: held
    live = Lease(store, "b" * 32)  # any process's heartbeat sweeps the day-old one
    with live:
        with store.engine.begin() as conn:
            live.take(conn)
        lease_module._beater.beat()
        assert {r.token for r in leases(store)} == {live.token, lease.token}


class _Held:
    """Stands in for a channel whose `was_delivered` waits (a provider's status API taking its time)."""

    def __init__(self, inner: Channel):
        self.inner = inner
        self.asking, self.answer = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def was_delivered(self, message_pk: int, rfc_message_id: str):
        self.asking.set()
        assert self.answer.wait(30)
        return self.inner.was_delivered(message_pk, rfc_message_id)


def test_reconcile_never_locks_a_live_runs_messages_while_it_asks_a_channel(make_runtime, store):
    """A live run's messages `sending` past STUCK_AFTER beside a dead run's: reconcile asks the
    channel about the dead run's only, and the live run's rows are not locked meanwhile — its
    record does not wait for another tick's questions to a provider (it did: every stuck row
    was locked `FOR UPDATE` while the channels were asked). PostgreSQL: on SQLite a write
    transaction holds the whole database, whatever it locks."""
    if store.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL only")
    rt, slow = slow_runtime(make_runtime, store)
    runner = threading.Thread(target=lambda: run_tick(rt, "j", NOW))
    runner.start()
    try:
        assert slow.entered.wait(30)
        (lease,) = leases(store)
        dead = subscriber(store, "gone@example.com")
        with store.engine.begin() as conn:  # claimed by a run that left no lease (its message was never written)
            conn.execute(message_t.insert().values(contact_id=dead, journey="j", step_id="hello", attempt_key="send",
                                                   channel="email", template="hello", address="gone@example.com",
                                                   status="sending", claim="f" * 32, claimed_at=NOW, due_at=NOW,
                                                   created_at=NOW, attempts=1))
        other = another_worker(make_runtime)
        asked = _Held(FileEmailChannel.from_env(IntegrationContext(other.project.root, other.data_dir, other.env)))
        other.channel_factory = lambda name: asked
        done: dict = {}
        reconciling = threading.Thread(target=lambda: done.setdefault("report", reconcile_stuck(other, LATER)))
        reconciling.start()
        try:
            assert asked.asking.wait(30)
            with store.engine.begin() as conn:  # what the live run's record does, while the channel is asked
                conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
                written = conn.execute(update(message_t).where(message_t.c.claim == lease.token)
                                       .values(reason="recording")).rowcount
            assert written == 2
        finally:
            asked.answer.set()
            reconciling.join(30)
        assert done["report"] == {"queued": 1}  # the dead run's message, never written: re-queued
    finally:
        slow.go.set()
        runner.join(30)
    # the live run recorded its own two; its deliver stage then sent the re-queued one
    assert [m.status for m in messages(store) if m.step_id == "hello"] == ["sent"] * 3
    assert sorted(slow.delivered) == sorted(set(slow.delivered)) and len(slow.delivered) == 3


def test_reconcile_takes_no_write_lock_when_every_stuck_message_belongs_to_a_live_run(make_runtime, store):
    """The read that tells a live run's messages apart comes before any write: a tick whose
    reconcile finds only those does not wait for the database's writers (SQLite's write lock,
    a PostgreSQL table locked against row locks)."""
    rt, slow = slow_runtime(make_runtime, store)
    runner = threading.Thread(target=lambda: run_tick(rt, "j", NOW))
    runner.start()
    try:
        assert slow.entered.wait(30)
        other = another_worker(make_runtime)
        blocker = store.engine.raw_connection()
        try:
            if store.dialect == "sqlite":
                blocker.driver_connection.execute("BEGIN IMMEDIATE")
            else:
                blocker.cursor().execute("LOCK TABLE message IN EXCLUSIVE MODE")  # reads pass, FOR UPDATE waits
            done: dict = {}
            reconciling = threading.Thread(target=lambda: done.setdefault("report", reconcile_stuck(other, LATER)))
            reconciling.start()
            reconciling.join(10)
            assert done.get("report") == {}
        finally:
            blocker.rollback()
            blocker.close()
    finally:
        slow.go.set()
        runner.join(30)
    assert [m.status for m in messages(store) if m.step_id == "hello"] == ["sent", "sent"]
def test_a_pipelined_ticks_delivery_processes_stop_when_the_tick_could_not_renew_its_lease(make_runtime, store):
    """The tick process holds the lease and tells its delivery processes when it renewed it
    (the hand-off's `renewed`); past LEASE_TTL / 2 without, they hand nothing more over."""
    import multiprocessing

    from nurture.send.deliver import deliver_handed
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(2):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    from nurture.runtime.enroll import enroll
    from nurture.steps.advance import advance
    enroll(rt, rt.plan("j"), NOW)
    handoff = Handoff(multiprocessing.get_context("spawn"))
    lease = Lease(rt.store, handoff.token, shared=handoff.renewed)
    rt.handoff = handoff.publishing_here(lambda batch: None, lease)
    try:
        advance(rt, rt.plan("j"), NOW)
    finally:
        rt.handoff = None
        handoff.close()
    assert [r.token for r in leases(store)] == [handoff.token] and lease.renewal is handoff.renewed  # what they read
    lease.renewal.value -= LEASE_TTL.total_seconds()  # the tick process could not reach the database since
    with pytest.raises(LeaseLost):
        deliver_handed(rt, NOW, handoff.batches(), shared=handoff)  # as a delivery process does
    assert [m.status for m in messages(store)] == ["sending", "sending"]
    assert not (rt.data_dir / "outbox").exists() or not list((rt.data_dir / "outbox").rglob("*.eml"))
    lease.release()


@pytest.mark.parametrize("path", ["handed", "claimed"])
def test_a_run_whose_lease_lapsed_does_not_overwrite_what_another_run_recorded(make_runtime, store, caplog, path,
                                                                              monkeypatch):
    """The run's channel holds its messages while its lease lapses (its heartbeat out of the
    database's reach for LEASE_TTL: here, a lease row that looks like another machine's, stale).
    Another worker reconciles and sends them. When the slow channel returns, its results must
    not overwrite the other run's record (fails without the claim check: `sent_at` becomes the
    slow run's), and the run says what happened."""
    monkeypatch.setattr(lease_module._beater, "beat", lambda: None)  # (its heartbeat cannot reach the database)
    rt, slow = slow_runtime(make_runtime, store)
    if path == "claimed":
        run_tick_without_handoff(rt)
        work = lambda: deliver(rt, NOW, "j")  # noqa: E731
    else:
        work = lambda: run_tick(rt, "j", NOW)  # noqa: E731
    runner = threading.Thread(target=work)
    runner.start()
    try:
        assert slow.entered.wait(30)
        with store.engine.begin() as conn:
            conn.execute(update(lease_t).values(host="worker-7", beat_at=wall_now() - LEASE_TTL - timedelta(seconds=1)))
        other = another_worker(make_runtime)
        assert reconcile_stuck(other, LATER) == {"queued": 2}  # the file channel has not seen them
        assert deliver(other, LATER, "j")[("hello", "sent", None)] == 2
    finally:
        slow.go.set()
        runner.join(30)
    hello = [m for m in messages(store) if m.step_id == "hello"]
    assert [(m.status, m.claim) for m in hello] == [("sent", None)] * 2
    assert {m.sent_at.replace(tzinfo=None) for m in hello} == {LATER.replace(tzinfo=None)}  # the other run's record
    assert "2 message(s) of delivery run" in caplog.text and "may have gone out twice" in caplog.text


def test_a_failing_pipelined_tick_holds_its_lease_until_its_delivery_processes_are_done(make_runtime, store):
    """The advance stage fails after handing chunks over: the tick's error is raised only once
    its delivery process has sent what it was handed, under the tick's lease (it was released
    at once, leaving the process's messages unleased, `sending`, while it still had them)."""
    from nurture.runtime.enroll import enroll
    from nurture.runtime.parallel import pipelined
    from nurture.steps.advance import advance
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 40
    for i in range(300):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    enroll(rt, rt.plan("j"), NOW)

    def produce():
        advance(rt, rt.plan("j"), NOW)
        raise RuntimeError("the guards failed")
    with pytest.raises(RuntimeError, match="the guards failed"):
        pipelined(rt, NOW, "j", 2, produce)
    assert leases(store) == []
    hello = [m for m in messages(store) if m.step_id == "hello"]
    assert len(hello) == 300 and {m.status for m in hello} == {"sent"}
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 300
