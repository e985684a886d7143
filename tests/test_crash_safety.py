"""Specification: a crash between "delivered" and "recorded" never leads to a resend.

A message is marked `sending` (committed) before its channel is called. A worker that dies
after that leaves it `sending`: later ticks do not deliver it again, and once it has been stuck
for a while `reconcile_stuck` asks the channel — the file channels know exactly — and records it
sent, re-queues it only when the channel is sure it was not delivered, and records it failed
(`delivery_unknown`) when the channel cannot tell. The crash is simulated by a channel that
raises a BaseException (as a killed process would stop), so no `except Exception` records it."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Sequence

import pytest

from integrations.file_channels import FileEmailChannel, FileSmsChannel
from nurture.registry import Channel, DeliveryResult, IntegrationContext, OutgoingMessage
from nurture.runtime import run_tick
from nurture.send.reconcile import STUCK_AFTER, reconcile_stuck
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, outcomes, subscriber

T0 = utc(2026, 3, 4, 10, 0)


class Crash(BaseException):
    """The process dies here."""


class CrashingChannel(Channel):
    """Wraps a real channel; crashes before or after it delivers, `crashes` times."""
    name = "test.crashing"
    channel = "email"

    def __init__(self, inner: Channel, *, after_delivery: bool, crashes: int = 1):
        self.inner, self.after_delivery, self.crashes = inner, after_delivery, crashes
        self.delivered: list[int] = []

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "CrashingChannel":  # pragma: no cover - built directly
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        if self.crashes and not self.after_delivery:
            self.crashes -= 1
            raise Crash()
        results = self.inner.send_batch(messages)
        self.delivered.extend(m.message_pk for m in messages)
        if self.crashes:
            self.crashes -= 1
            raise Crash()
        return results

    def was_delivered(self, message_pk: int, rfc_message_id: str):
        return self.inner.was_delivered(message_pk, rfc_message_id)


class BlindChannel(Channel):
    """A provider that cannot say after the fact whether a message went out."""
    name = "test.blind"
    channel = "email"

    def __init__(self):
        self.delivered: list[int] = []

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "BlindChannel":  # pragma: no cover - built directly
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.delivered.extend(m.message_pk for m in messages)
        raise Crash()


def context(rt) -> IntegrationContext:
    return IntegrationContext(rt.project.root, rt.data_dir, rt.env)


def crashed_runtime(make_runtime, store, channel: str = "email", *, after_delivery: bool):
    step = ("- id: hello\n  send: {channel: email, template: hello, subject: Hello}" if channel == "email"
            else "- id: hello\n  send: {channel: sms, template: hello}")
    rt = make_runtime({"j": journey_yaml("j", step)})
    inner = (FileEmailChannel if channel == "email" else FileSmsChannel).from_env(context(rt))
    crashing = CrashingChannel(inner, after_delivery=after_delivery)
    rt.channel_factory = lambda name: crashing
    cid = subscriber(store, "ann@example.com", channels=(channel,), phone="+4915112345678")
    add_event(store, cid, "signup", T0)
    with pytest.raises(Crash):
        run_tick(rt, "j", T0 + timedelta(minutes=1))
    rt._channels.clear()  # the next tick is a fresh worker process
    return rt, crashing


def eml_files(rt):
    return sorted((rt.data_dir / "outbox" / "email").rglob("*.eml"))


def test_a_message_left_sending_by_a_crash_is_not_resent_by_the_next_tick(make_runtime, store):
    rt, crashing = crashed_runtime(make_runtime, store, after_delivery=True)
    assert outcomes(store) == [("hello", "sending", None)]
    assert len(eml_files(rt)) == 1
    run_tick(rt, "j", T0 + timedelta(minutes=2))
    run_tick(rt, "j", T0 + timedelta(minutes=10))
    assert outcomes(store) == [("hello", "sending", None)]
    assert len(eml_files(rt)) == 1 and crashing.delivered == [messages(store)[0].id]


def test_reconcile_records_sent_when_the_file_channel_has_the_eml(make_runtime, store):
    rt, crashing = crashed_runtime(make_runtime, store, after_delivery=True)
    later = T0 + timedelta(minutes=1) + STUCK_AFTER
    run_tick(rt, "j", later)
    (m,) = messages(store)
    assert (m.status, m.reason, m.sent_at) == ("sent", "reconciled", later)
    assert len(eml_files(rt)) == 1  # delivered exactly once


def test_reconcile_requeues_when_the_channel_is_sure_it_was_not_delivered(make_runtime, store):
    rt, crashing = crashed_runtime(make_runtime, store, after_delivery=False)
    assert eml_files(rt) == [] and crashing.delivered == []
    later = T0 + timedelta(minutes=1) + STUCK_AFTER
    report = reconcile_stuck(rt, later)
    assert report == {"queued": 1}
    assert outcomes(store) == [("hello", "queued", "requeued_after_crash")]
    run_tick(rt, "j", later)
    assert outcomes(store) == [("hello", "sent", None)]
    assert len(eml_files(rt)) == 1


def test_reconcile_records_failed_delivery_unknown_when_the_channel_cannot_tell(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    blind = BlindChannel()
    rt.channel_factory = lambda name: blind
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    with pytest.raises(Crash):
        run_tick(rt, "j", T0 + timedelta(minutes=1))
    run_tick(rt, "j", T0 + timedelta(minutes=1) + STUCK_AFTER)
    assert outcomes(store) == [("hello", "failed", "delivery_unknown")]
    run_tick(rt, "j", T0 + timedelta(hours=2))
    assert len(blind.delivered) == 1  # never sent a second time


def test_an_sms_delivered_before_the_crash_is_found_in_the_jsonl_and_recorded_sent(make_runtime, store):
    rt, _ = crashed_runtime(make_runtime, store, channel="sms", after_delivery=True)
    run_tick(rt, "j", T0 + timedelta(minutes=1) + STUCK_AFTER)
    assert outcomes(store) == [("hello", "sent", "reconciled")]
    lines = (rt.data_dir / "outbox" / "sms.jsonl").read_text().splitlines()
    assert [json.loads(line)["to"] for line in lines] == ["+4915112345678"]


def test_a_message_a_live_worker_has_just_claimed_is_not_requeued_by_another_worker(make_runtime, store):
    from nurture.send.deliver import _claim
    from nurture.store.tables import message_t
    worker_a = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    worker_b = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    cid = subscriber(store, "ann@example.com")
    now = T0 + timedelta(minutes=40)
    with store.engine.begin() as conn:  # queued at T0, due again now after two retries
        conn.execute(message_t.insert().values(contact_id=cid, journey="j", step_id="hello", attempt_key="send",
                                               channel="email", template="hello", address="ann@example.com",
                                               status="queued", due_at=now, created_at=T0, attempts=2))
    claimed = _claim(worker_a, now, None, 0, 1)  # worker A is about to call its channel
    assert len(claimed) == 1
    run_tick(worker_b, "j", now)  # worker B ticks at the same moment
    assert outcomes(store) == [("hello", "sending", None)]
    assert eml_files(worker_b) == []


def test_two_workers_reconciling_at_once_never_requeue_a_message_being_sent_again(make_runtime, store):
    """Worker 1 finds the stuck message undelivered and re-queues it; a delivery claims it again
    at once. Worker 2, reconciling the same tick, must not apply its own (older) verdict to the
    message now being sent: it skips what worker 1 holds."""
    import threading

    from nurture.send.deliver import _claim
    rt, crashing = crashed_runtime(make_runtime, store, after_delivery=False)
    later = T0 + timedelta(minutes=1) + STUCK_AFTER
    first, asking, second_asked, claimed_again = None, threading.Event(), threading.Event(), threading.Event()
    real_ask = crashing.was_delivered

    def was_delivered(pk, rfc_id):
        answer = real_ask(pk, rfc_id)
        if threading.current_thread() is first:
            asking.set()
            second_asked.wait(1.5)  # (a worker 2 that read the message would ask meanwhile)
        else:
            second_asked.set()
            claimed_again.wait(10)
        return answer
    crashing.was_delivered = was_delivered
    reports: dict[str, object] = {}
    first = threading.Thread(target=lambda: reports.setdefault("first", reconcile_stuck(rt, later)))
    second = threading.Thread(target=lambda: reports.setdefault("second", reconcile_stuck(rt, later)))
    first.start()
    assert asking.wait(10)
    second.start()
    first.join(30)
    assert outcomes(store) == [("hello", "queued", "requeued_after_crash")]
    claim = _claim(rt, later, None, 0, 1)  # a delivery takes it at once
    claimed_again.set()
    second.join(30)
    assert len(claim) == 1 and reports["first"] == {"queued": 1} and not reports["second"]
    assert outcomes(store) == [("hello", "sending", "requeued_after_crash")]  # still the delivery's


class _ExplodingChannel:
    """Delivers the first message of a batch, then raises (a plug-in bug)."""

    def __init__(self, knows: bool):
        self.knows = knows
        self.delivered: list[int] = []

    def send_batch(self, messages):
        self.delivered.append(messages[0].message_pk)
        raise RuntimeError("socket closed")

    def was_delivered(self, message_pk, rfc_message_id):
        return (message_pk in self.delivered) if self.knows else None

    def close(self):
        pass


@pytest.mark.parametrize("knows", [True, False])
def test_a_channel_that_raises_mid_batch_never_causes_a_second_send(make_runtime, store, knows):
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    channel = _ExplodingChannel(knows)
    rt.channel_factory = lambda name: channel
    for i in range(3):
        cid = subscriber(store, f"p{i}@example.com")
        add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    statuses = sorted((status, (reason or "").split(":")[0]) for _, status, reason in outcomes(store))
    if knows:  # the channel can tell: the delivered one is sent, the others retry later
        assert statuses == [("queued", "channel_error"), ("queued", "channel_error"), ("sent", "reconciled")]
    else:      # it cannot: nothing is resent
        assert statuses == [("failed", "delivery_unknown")] * 3
    first = list(channel.delivered)
    run_tick(rt, "j", T0 + timedelta(hours=2))
    assert channel.delivered.count(first[0]) == 1


def test_an_eml_torn_by_a_crash_counts_as_not_delivered_and_is_removed(tmp_path):
    channel = FileEmailChannel(tmp_path / "outbox", "shop@example.com", "Shop")
    msg = OutgoingMessage(message_pk=7, rfc_message_id="<nurture.7.j@example.com>", contact_id=1, channel="email",
                          journey="j", step_id="hello", purpose="marketing", to="ann@example.com",
                          subject="Hi", html="<p>Hi</p>", text="Hi")
    channel.send_batch([msg])
    path = channel.path_for(7, "j")
    assert channel.was_delivered(7, msg.rfc_message_id) is True
    path.write_bytes(path.read_bytes()[:-40])  # the process died half-way through the write
    assert channel.was_delivered(7, msg.rfc_message_id) is False
    assert not path.exists()


def test_a_deliver_stage_that_fails_part_way_reports_exactly_the_batches_it_recorded(make_runtime, store, monkeypatch):
    """A stage commits as it goes; when a later batch fails, the report it was counting in
    (`StageCall.report`: what a Prefect retry of the stage goes on from, flows/journey.py)
    holds what the committed batches did — as the message log says, no more: the failed
    batch's record was rolled back, its message stays `sending` for reconcile."""
    from nurture.runtime.context import TickReport
    from nurture.runtime.tick import STAGE_BY_NAME, StageCall
    from nurture.send import deliver as deliver_module
    from nurture.steps.advance import advance
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    for i in range(3):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    now = T0 + timedelta(minutes=1)
    for name in ("prepare", "enroll"):
        STAGE_BY_NAME[name].run(StageCall(rt, "j", now))
    advance(rt, rt.plan("j"), now)  # queued only (no hand-off): the deliver stage sends them
    rt.batch_size = 1
    real_record = deliver_module._Delivery.record
    records: list[int] = []

    def second_record_fails(self, *args):
        records.append(1)
        if len(records) == 2:
            raise RuntimeError("database is locked")
        return real_record(self, *args)
    monkeypatch.setattr(deliver_module._Delivery, "record", second_record_fails)
    report = TickReport("j", now.isoformat())
    with pytest.raises(RuntimeError, match="locked"):
        STAGE_BY_NAME["deliver"].run(StageCall(rt, "j", now, report=report))
    assert sorted(status for _, status, _ in outcomes(store)) == ["queued", "sending", "sent"]
    assert dict(report.outcomes) == {("hello", "sent", None): 1}


def test_an_eml_the_disk_takes_only_part_of_is_not_sent_but_retried_and_leaves_no_cut_off_file(make_runtime, store):
    """A disk that fills up (here: the file-size limit, RLIMIT_FSIZE — Python ignores SIGXFSZ,
    so write(2) writes part of the file, then fails with EFBIG): the channel wrote once and
    recorded `sent` for a .eml cut off in its body, never retried."""
    import resource
    big = 3_000_000
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: big, subject: Hi}")},
                      templates={"email/big.html": "<p>Hello {{ contact.first_name }} " + "{{ 'x' * %d }}</p>" % big})
    cid = subscriber(store, "ann@example.com", first_name="Ann")
    add_event(store, cid, "signup", T0)
    room = sum(p.stat().st_size for p in rt.data_dir.rglob("*") if p.is_file()) + 1_500_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    try:
        run_tick(rt, "j", T0 + timedelta(minutes=1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    (m,) = messages(store)
    assert (m.status, m.reason) == ("queued", "outbox_write: File too large")
    assert list((rt.data_dir / "outbox" / "email").rglob("*.eml")) == []
    run_tick(rt, "j", T0 + timedelta(minutes=30))  # room again: the retry writes it whole
    (m,) = messages(store)
    (eml,) = (rt.data_dir / "outbox" / "email").rglob("*.eml")
    assert m.status == "sent" and eml.read_bytes().rstrip().endswith(b"--") and eml.stat().st_size > big
