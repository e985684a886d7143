"""The hand-off of a pipelined tick (nurture.send.handoff): the advance stage inserts the
messages that passed the checks already claimed (`sending`, the tick's token) and hands their
keys to the delivery processes; nothing else can take them, a crash leaves them to reconcile,
and a channel that is down puts them back as a claim's messages would be."""
from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from typing import Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from nurture.registry import Channel, DeliveryResult, OutgoingMessage
from nurture.runtime import run_tick
from nurture.runtime import tick as tick_module
from nurture.runtime.enroll import enroll
from nurture.send.deliver import deliver, deliver_handed
from nurture.send.guards.pipeline import lock_contacts
from nurture.send.handoff import CHUNK, Handoff
from nurture.send.reconcile import STUCK_AFTER, reconcile_stuck
from nurture.steps.advance import advance
from nurture.store.db import open_store
from nurture.store.tables import event_t
from tests.conftest import utc
from tests.engine_fixtures import (add_contact, add_event, contact_row, enrollments, journey_yaml, message_t,
                                   messages, outcomes, subscriber)

T0 = utc(2026, 3, 4, 10, 0)
NOW = T0 + timedelta(minutes=1)
STEP = "- id: hello\n  send: {channel: email, template: hello, subject: Hi}\n- id: later\n  wait: 30d"


class Scripted(Channel):
    """A channel answering each batch from a script (then `sent`), remembering what it got."""
    name = "test.scripted"
    channel = "email"
    local = True

    def __init__(self, script: list[str]):
        self.script, self.batches = list(script), []

    @classmethod
    def from_env(cls, context):  # pragma: no cover - built directly by the tests
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.batches.append(sorted(m.message_pk for m in messages))
        status = self.script.pop(0) if self.script else "sent"
        return [DeliveryResult(m.message_pk, status, reason=None if status == "sent" else f"scripted_{status}")
                for m in messages]


def handed_advance(rt, journey: str = "j", now=NOW) -> Handoff:
    """Enrollment, then the advance stage as a pipelined tick runs it: with a hand-off, closed afterwards."""
    enroll(rt, rt.plan(journey), now)
    handoff = Handoff(multiprocessing.get_context("spawn"))
    rt.handoff = handoff
    try:
        advance(rt, rt.plan(journey), now)
    finally:
        rt.handoff = None
        handoff.close()
    return handoff


def test_the_advance_stage_hands_over_what_passed_the_checks_claimed_and_nothing_else(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    passed = [subscriber(store, f"p{i}@example.com") for i in range(3)]
    unconsented = add_contact(store, "nobody@example.com")  # no consent: suppressed, not handed
    for cid in passed + [unconsented]:
        add_event(store, cid, "signup", T0)
    handoff = handed_advance(rt)
    rows = {m.contact_id: m for m in messages(store)}
    for cid in passed:
        m = rows[cid]
        assert (m.status, m.claim, m.claimed_at, m.attempts, m.counted_at) == ("sending", handoff.token, NOW, 1, NOW)
    assert (rows[unconsented].status, rows[unconsented].claim) == ("suppressed", None)
    assert deliver(rt, NOW, "j") == {}  # the claim path cannot take them: they are not queued
    batches = list(handoff.batches())
    assert [(b.journey, b.step_id, b.token) for b in batches] == [("j", "hello", handoff.token)]
    handed = {r[0]: r for r in batches[0].rows}  # as delivery's load would read them
    assert sorted(handed) == sorted(m.id for m in messages(store) if m.contact_id in passed)
    assert {(r[9], r[10], r[12], r[20]) for r in handed.values()} == {
        (cid, rows[cid].address, contact_row(store, cid).first_name, "signup") for cid in passed}
    report = deliver_handed(rt, NOW, batches)
    assert report == {("hello", "sent", None): 3}
    assert sorted(outcomes(store)) == [("hello", "sent", None)] * 3 + [("hello", "suppressed", "no_consent")]
    assert all(m.claim is None for m in messages(store))
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 3


def test_a_message_that_existed_before_is_not_handed_over(make_runtime, store):
    """The insert skips a message whose (enrollment, step) key exists already: it keeps its own
    state and is not handed over (it does not carry the tick's token)."""
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    ann, bob = subscriber(store, "ann@example.com"), subscriber(store, "bob@example.com")
    for cid in (ann, bob):
        add_event(store, cid, "signup", T0)
    enroll(rt, rt.plan("j"), NOW)
    (ann_enrollment,) = [e.id for e in enrollments(store) if e.contact_id == ann]
    with store.engine.begin() as conn:
        conn.execute(message_t.insert().values(enrollment_id=ann_enrollment, contact_id=ann, journey="j", step_id="hello",
                                               attempt_key="send", channel="email", template="hello", status="failed",
                                               reason="earlier", due_at=T0, created_at=T0, attempts=1))
    handoff = handed_advance(rt)
    (batch,) = list(handoff.batches())
    assert [r[9] for r in batch.rows] == [bob]
    assert [(m.contact_id, m.status, m.reason) for m in messages(store)] == [(ann, "failed", "earlier"),
                                                                             (bob, "sending", None)]


def test_handed_messages_of_a_channel_that_is_down_are_put_back_queued_without_using_an_attempt(
        make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    channel = Scripted(["unavailable"])
    rt.channel_factory = lambda name: channel
    for i in range(4):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    handoff = handed_advance(rt)
    (batch,) = list(handoff.batches())
    half = len(batch.rows) // 2
    chunks = [batch._replace(rows=batch.rows[:half]), batch._replace(rows=batch.rows[half:])]
    report = deliver_handed(rt, NOW, chunks)
    # The first chunk found the channel down; the second was put back without trying it.
    assert len(channel.batches) == 1
    assert report == {("channel:email", "unavailable", "scripted_unavailable"): 4}
    assert [(m.status, m.attempts, m.claim) for m in messages(store)] == [("queued", 0, None)] * 4
    later = NOW + timedelta(minutes=10)
    assert deliver(rt, later, "j") == {("hello", "sent", None): 4}  # the provider is back: claimed as usual


def test_a_channel_one_process_found_down_is_not_tried_by_the_others_of_the_tick(make_runtime, store):
    """One try per channel and tick, not per delivery process: what one process of a pipelined
    tick found unusable, the others learn through the hand-off (fails without it: the second
    process tries the channel again)."""
    from nurture.send.deliver import HandedDelivery
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    channel = Scripted(["unavailable"])
    rt.channel_factory = lambda name: channel
    chunks = _chunks(rt, store, 4, 2)
    shared = Handoff(multiprocessing.get_context("spawn"))
    first, second = HandedDelivery(rt, NOW, shared=shared), HandedDelivery(rt, NOW, shared=shared)
    with first:
        first.take(chunks[0])
    assert shared.down() == {"email": "scripted_unavailable"}
    with second:  # another process of the same tick, a moment later
        second.take(chunks[1])
    assert len(channel.batches) == 1
    assert first.outcomes() == {("channel:email", "unavailable", "scripted_unavailable"): 2}
    assert second.outcomes() == {("channel:email", "unavailable", "scripted_unavailable"): 2}
    assert [(m.status, m.attempts, m.claim) for m in messages(store)] == [("queued", 0, None)] * 4


def test_the_channels_found_down_fit_in_the_shared_room_whatever_their_reasons():
    from nurture.send.handoff import DOWN_BYTES
    shared = Handoff(multiprocessing.get_context("spawn"))
    shared.mark_down({"email": "535 " + "x" * 5000})
    shared.mark_down({"sms": "twilio: \u00fcberlastet"})
    assert set(shared.down()) == {"email", "sms"} and len(shared.down()["email"]) < DOWN_BYTES
    assert shared.down()["sms"] == "twilio: \u00fcberlastet"


def test_handed_messages_nobody_delivered_are_reconciled_like_any_claimed_after_a_crash(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(2):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    handed_advance(rt)  # the delivery process died before taking the chunk
    run_tick(rt, "j", NOW + timedelta(minutes=5))
    assert [m.status for m in messages(store)] == ["sending"] * 2  # never claimed again as queued
    later = NOW + STUCK_AFTER
    assert reconcile_stuck(rt, later) == {"queued": 2}  # the file channel knows: not delivered
    run_tick(rt, "j", later)
    assert outcomes(store) == [("hello", "sent", None)] * 2
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 2


def test_a_record_that_fails_in_the_recording_thread_fails_the_delivery_run(make_runtime, store, monkeypatch):
    """Chunks are recorded by a helper thread while the next renders; its failure is not lost."""
    from nurture.send import deliver as deliver_module
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(4):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    handoff = handed_advance(rt)
    (batch,) = list(handoff.batches())
    chunks = [batch._replace(rows=batch.rows[:2]), batch._replace(rows=batch.rows[2:])]

    def broken(self, conn, *outcome):
        raise RuntimeError("disk full")
    monkeypatch.setattr(deliver_module._Delivery, "record", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        deliver_handed(rt, NOW, chunks)
    assert [m.status for m in messages(store)] == ["sending"] * 4  # handed over, never recorded: reconcile's


def _chunks(rt, store, n: int, size: int, now=NOW) -> list:
    for i in range(n):
        add_event(store, subscriber(store, f"p{i}.{now:%H%M}@example.com"), "signup", now - timedelta(minutes=1))
    (batch,) = list(handed_advance(rt, now=now).batches())
    return [batch._replace(rows=batch.rows[i:i + size]) for i in range(0, len(batch.rows), size)]


def test_a_single_chunk_is_recorded_without_a_recording_thread(make_runtime, store, monkeypatch):
    """Most ticks hand over one chunk: it is recorded when the delivery ends, in this thread —
    no thread started per tick. The second chunk starts the thread, which records the first
    while the second renders."""
    import threading
    from nurture.send import deliver as deliver_module
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    chunks = _chunks(rt, store, 4, 2)
    recorded_by: list[str] = []
    real = deliver_module._Delivery.record
    monkeypatch.setattr(deliver_module._Delivery, "record", lambda self, conn, *outcome: recorded_by.append(
        threading.current_thread().name.split("_")[0]) or real(self, conn, *outcome))
    assert deliver_handed(rt, NOW, chunks[:1]) == {("hello", "sent", None): 2}
    assert recorded_by == ["MainThread"]
    assert deliver_handed(rt, NOW, chunks[1:]) == {("hello", "sent", None): 2}
    assert recorded_by == ["MainThread", "MainThread"]  # one chunk again
    recorded_by.clear()
    later = NOW + timedelta(minutes=10)
    assert deliver_handed(rt, later, _chunks(rt, store, 6, 2, later)) == {("hello", "sent", None): 6}
    assert recorded_by == ["nurture-record", "nurture-record", "MainThread"]


def test_a_delivered_chunk_is_recorded_even_when_the_advance_stage_then_fails(make_runtime, store):
    """The last chunk handed to its channel is recorded when the block around the delivery
    fails (the advance stage's next batch raising): its messages were sent, and `sent` they
    are — not left `sending` for reconcile to ask the channel about."""
    from nurture.send.deliver import HandedDelivery
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    chunks = _chunks(rt, store, 4, 2)
    with pytest.raises(RuntimeError, match="next batch"):
        with HandedDelivery(rt, NOW) as delivery:
            for chunk in chunks:
                delivery.take(chunk)
            raise RuntimeError("the next batch's guards failed")
    assert [m.status for m in messages(store)] == ["sent"] * 4


def test_a_large_tick_is_published_in_chunks_and_every_chunk_is_taken_once():
    handoff = Handoff(multiprocessing.get_context("spawn"))
    rows = [(i, "x") for i in range(CHUNK * 2 + 7)]
    handoff.publish("j", "hello", rows)
    handoff.close()
    got = list(handoff.batches())
    assert [len(b.rows) for b in got] == [CHUNK, CHUNK, 7]
    assert [r for b in got for r in b.rows] == rows
    assert list(handoff.batches()) == []  # closed and all taken: a second taker ends at once


def test_a_taker_stops_when_the_others_are_gone_with_a_chunk_uncounted():
    handoff = Handoff(multiprocessing.get_context("spawn"))
    with handoff._handed.get_lock():  # a chunk counted as handed that no taker will ever count
        handoff._handed.value += 1
    handoff.close()
    assert list(handoff.batches(alive=lambda: False)) == []


def test_the_publisher_delivers_a_chunk_itself_while_the_takers_are_too_far_behind():
    """At most `limit` chunks wait in the queue: the advance stage never claims a large tick
    far ahead of its channel (messages waiting `sending` past STUCK_AFTER, and the tick
    process's memory holding them all)."""
    from nurture.send.handoff import AHEAD
    handoff = Handoff(multiprocessing.get_context("spawn"), takers=2)
    assert handoff.limit == 2 * AHEAD
    here: list = []
    publisher = handoff.publishing_here(here.append)
    assert publisher.token == handoff.token
    rows = [(i, "x") for i in range(CHUNK * (handoff.limit + 3))]
    publisher.publish("j", "hello", rows)
    assert handoff.waiting() == handoff.limit and len(here) == 3
    taken = handoff._queue.get(timeout=5)  # as `batches` takes one
    with handoff._taken.get_lock():
        handoff._taken.value += 1
    publisher.publish("j", "hello", [(-1, "y")])  # room for one again: queued, not delivered here
    assert handoff.waiting() == handoff.limit and len(here) == 3
    handoff.close()
    queued = [taken] + list(handoff.batches())
    assert sorted(r[0] for b in queued + here for r in b.rows) == sorted([-1] + [r[0] for r in rows])
    assert len(queued) == handoff.limit + 1


def test_a_pipelined_tick_keeps_at_most_its_limit_of_chunks_waiting(make_runtime, store, monkeypatch):
    from nurture.send import handoff as handoff_module
    monkeypatch.setattr(tick_module, "LARGE_TICK", 1)
    monkeypatch.setattr(handoff_module, "CHUNK", 10)  # (chunks are cut by the publishing process)
    monkeypatch.setattr(handoff_module, "AHEAD", 1)
    seen: list = []
    publish = Handoff.publish

    def watched(self, journey, step_id, rows, here=None):
        publish(self, journey, step_id, rows, here=here)
        seen.append((self.waiting(), self.limit, here is not None))
    monkeypatch.setattr(Handoff, "publish", watched)
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 40
    for i in range(300):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    run_tick(rt, "j", NOW, workers=2)
    assert seen and all(here and limit == 1 and waiting <= 1 for waiting, limit, here in seen)
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 300 and len({m.contact_id for m in sent}) == 300
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 300


def test_a_pipelined_tick_sends_each_message_once_from_both_processes(make_runtime, store, monkeypatch):
    monkeypatch.setattr(tick_module, "LARGE_TICK", 1)
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 40  # many batches, so the delivery process takes chunks while advance still guards
    for i in range(300):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    report = run_tick(rt, "j", NOW, workers=2)
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 300 and len({m.contact_id for m in sent}) == 300
    assert all((m.attempts, m.claimed_at, m.claim) == (1, NOW, None) for m in sent)
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 300
    assert report.outcomes[("hello", "sent", None)] == 300 and report.outcomes[("hello", "queued", None)] == 300



@pytest.mark.parametrize("handed", [False, True])
def test_a_batch_is_checked_and_inserted_in_enrollment_order_whatever_its_due_order(make_runtime, store, handed):
    """The batch is taken oldest due first; its outbox rows still get their ids in enrollment
    order (as when it was read again by id), with or without a hand-off."""
    from nurture.store.tables import enrollment_t
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(4):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    enroll(rt, rt.plan("j"), NOW)
    with store.engine.begin() as conn:  # due in the reverse order of the enrollments
        ids = [r[0] for r in conn.execute(text("SELECT id FROM enrollment ORDER BY id"))]
        for k, eid in enumerate(ids):
            conn.execute(enrollment_t.update().where(enrollment_t.c.id == eid)
                         .values(next_due_at=NOW - timedelta(minutes=k)))
    if handed:
        handed_advance(rt)
    else:
        advance(rt, rt.plan("j"), NOW)
    rows = sorted(messages(store), key=lambda m: m.id)
    assert [m.enrollment_id for m in rows] == ids


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tick_in_one_process_delivers_each_batch_as_soon_as_it_is_committed(make_runtime, store, monkeypatch,
                                                                              workers):
    """A tick that does not pipeline processes — one delivery process (`workers=1`), or a tick
    under LARGE_TICK due whatever was asked for — with delivery not partitioned: each batch's
    messages are handed over claimed and sent from the rows the checks read — no claim, no
    load — before the next batch is guarded; each message once."""
    from nurture.send import deliver as deliver_module
    from nurture.send.handoff import LocalHandoff
    from nurture.steps import send as send_step
    assert tick_module.LARGE_TICK > 100  # 100 due: a small tick, no delivery processes
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 40
    for i in range(100):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    order: list[str] = []
    for module, name in ((send_step, "queue_due"), (deliver_module, "load_messages")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: order.append(_name) or _real(*a, **k))
    taken = LocalHandoff.publish
    monkeypatch.setattr(LocalHandoff, "publish",
                        lambda self, journey, step, rows: order.append(f"deliver {len(rows)}") or taken(self, journey, step, rows))
    report = run_tick(rt, "j", NOW, workers=workers)
    assert order == ["queue_due", "deliver 40", "queue_due", "deliver 40", "queue_due", "deliver 20"]  # no load
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 100 and len({m.contact_id for m in sent}) == 100
    assert all((m.attempts, m.claimed_at, m.claim) == (1, NOW, None) for m in sent)
    assert len(list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))) == 100
    assert report.outcomes[("hello", "sent", None)] == 100 and report.outcomes[("hello", "queued", None)] == 100


def test_a_channel_found_down_in_one_process_is_not_tried_again_for_each_batch(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 3
    channel = Scripted(["unavailable"])
    rt.channel_factory = lambda name: channel
    for i in range(7):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    report = run_tick(rt, "j", NOW, workers=1)
    # Found down by the advance stage's first batch, the other two batches were put back
    # untried, and the deliver stage does not try the channel again this tick (channels_down):
    # one try per tick, as a tick without a hand-off makes.
    assert [len(batch) for batch in channel.batches] == [3]
    assert report.outcomes[("channel:email", "unavailable", "scripted_unavailable")] == 7  # all put back
    assert [(m.status, m.attempts, m.claim) for m in messages(store)] == [("queued", 0, None)] * 7
    assert run_tick(rt, "j", NOW + timedelta(minutes=10)).outcomes[("hello", "sent", None)] == 7


def test_partitioned_delivery_is_left_to_the_deliver_stage(make_runtime, store, monkeypatch):
    """Delivery split into partitions (tasks in parallel under Prefect): the advance stage
    does not send; the messages wait `queued` for the partitions' claims."""
    from nurture.send import deliver as deliver_module
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    for i in range(6):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    loads = []
    real = deliver_module.load_messages
    monkeypatch.setattr(deliver_module, "load_messages", lambda rt, ids: loads.append(len(ids)) or real(rt, ids))
    report = run_tick(rt, "j", NOW, workers=1, partitions=2)
    assert report.outcomes[("hello", "sent", None)] == 6 and sum(loads) == 6  # claimed and loaded


@pytest.fixture
def pg_store(pg_server_url, pg_template):
    """A fresh PostgreSQL database alone (SQLite's write transaction holds the whole database:
    it has no row locks to test)."""
    from tests.conftest import _drop_pg_database, _fresh_pg_database
    url = _fresh_pg_database(pg_server_url, pg_template)
    store = open_store(url)
    yield store
    store.dispose()
    _drop_pg_database(pg_server_url, url)


def test_the_send_transaction_locks_its_contacts_rows_on_postgresql(pg_store):
    """lock_contacts takes the batch's contact rows FOR NO KEY UPDATE (in id order) without
    reading them back: another send (the same lock), an update or an erasure (FOR UPDATE)
    cannot take them until the send transaction ends; a row that only refers to the contact —
    an event tracked for it — is written at once (its foreign-key check's FOR KEY SHARE)."""
    ids = [add_contact(pg_store, f"p{i}@example.com") for i in range(3)]
    with pg_store.engine.begin() as conn:
        lock_contacts(conn, [ids[2], ids[0]])
        with pg_store.engine.connect() as other:
            free = {"FOR UPDATE": [], "FOR NO KEY UPDATE": [], "FOR KEY SHARE": []}
            for mode, got in free.items():
                for cid in ids:
                    try:
                        other.execute(text(f"SELECT id FROM contact WHERE id = :cid {mode} NOWAIT"),
                                      {"cid": cid}).all()
                        got.append(cid)
                    except OperationalError as exc:
                        assert "could not obtain lock" in str(exc)
                    other.rollback()
            other.execute(text("SET lock_timeout = '2s'"))  # (a wait would be an error, not a hang)
            other.execute(event_t.insert().values(event_id="e-during-send", contact_id=ids[0], name="page_view",
                                                  properties={}, occurred_at=NOW, received_at=NOW))
            other.commit()
    assert free == {"FOR UPDATE": [ids[1]], "FOR NO KEY UPDATE": [ids[1]], "FOR KEY SHARE": ids}


def test_on_postgresql_a_one_process_tick_sends_from_a_thread_while_it_guards_the_next_batch(make_runtime, store,
                                                                                            monkeypatch):
    """PostgreSQL: the chunks are sent by a thread (`_Sender`) while the advance stage guards
    the next batch; SQLite sends them in the tick's own thread (its one write lock is shared
    with the record). Either way each message once, and nothing left for the deliver stage."""
    import threading

    from nurture.send.deliver import HandedDelivery
    rt = make_runtime({"j": journey_yaml("j", STEP)})
    rt.batch_size = 10
    for i in range(30):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    takers: list[str] = []
    real = HandedDelivery.take
    monkeypatch.setattr(HandedDelivery, "take", lambda self, batch: takers.append(
        threading.current_thread().name.split("_")[0]) or real(self, batch))
    report = run_tick(rt, "j", NOW, workers=1)
    assert takers == (["nurture-send"] * 3 if store.is_postgres else ["MainThread"] * 3)
    assert report.outcomes[("hello", "sent", None)] == 30
    assert sorted(m.contact_id for m in messages(store, status="sent")) == sorted(
        {m.contact_id for m in messages(store)})
    assert not [t for t in threading.enumerate()
                if t.name.split("_")[0] in ("nurture-send", "nurture-record")]  # all ended


def test_a_chunk_the_sending_thread_failed_on_stops_the_tick_and_the_rest_is_not_sent():
    import threading

    from nurture.runtime.parallel import _Sender
    taken: list[int] = []
    go = threading.Event()

    def take(chunk: int) -> None:
        if chunk == 1:
            go.wait(10)
            raise RuntimeError("render crashed")
        taken.append(chunk)
    sender = _Sender(take)
    sender.put(1)
    sender.put(3)  # waits for the thread, still busy with chunk 1
    go.set()
    for _ in range(500):
        if sender.error is not None:
            break
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="render crashed"):  # the advance stage stops at its next chunk
        sender.put(4)
    with pytest.raises(RuntimeError, match="render crashed"):
        sender.close()
    assert taken == []  # chunk 3 waited behind the failed one: not sent (its messages: reconcile's)
    assert sender.thread is None

    go.clear()
    failing = _Sender(take)
    failing.put(1)
    go.set()
    failing.close(failing=True)  # the tick's own error stands: this one is logged, not raised
    assert failing.thread is None and isinstance(failing.error, RuntimeError)
