"""Specification: the holes a probe found in the send promise stay closed (issue 10).

- No contact or configuration value can add, end or replace a header (SMTP and .eml).
- Every delivery attempt — first or retry — passes consent, suppression, reachability, quiet
  hours and caps again, with the same outcomes and reasons as a first send.
- A real channel refuses to send without a proper secret and public URL; messages stay queued.
- A channel that cannot be used at all (auth, connection) does not use up attempts.
On SQLite and PostgreSQL, against a real SMTP server (aiosmtpd) where the channel is SMTP.
"""
from __future__ import annotations

import email
import email.policy
from datetime import datetime, timedelta, timezone
from typing import Sequence

import pytest
from aiosmtpd.controller import Controller

from nurture.registry import Channel, DeliveryResult, OutgoingMessage
from nurture.runtime import run_tick
from tests.conftest import utc
from tests.engine_fixtures import (add_contact, add_event, add_suppression, journey_yaml, messages, outcomes,
                                   set_consent, subscriber)
from tests.test_smtp_delivery import PASSWORD, Recorder, _free_port, smtp_server  # noqa: F401  (fixture)

T0 = utc(2026, 3, 4, 10, 0)
SECRET = "send-promise-secret-0123456789"
PROMO = journey_yaml("promo", """
- id: hello
  send: {channel: email, template: promo, subject: "Hello {{ contact.first_name }}"}
""")
INJECTED = "Eve\r\nBcc: evil@x.test\r\nReply-To: phish@x.test\r\nContent-Type: text/html\r\n\r\n<h1>Pay here</h1>"


def _smtp_runtime(make_runtime, port: int, **env: str):
    rt = make_runtime({"promo": PROMO}, templates={"email/promo.html": "<p>Hi {{ contact.first_name }}</p>"})
    rt.env.update({"NURTURE_EMAIL_BACKEND": "smtp", "NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port),
                   "NURTURE_SMTP_SECURITY": "none", "NURTURE_FROM_EMAIL": "news@shop.example",
                   "NURTURE_FROM_NAME": "Shop\r\nBcc: from-name@x.test", "NURTURE_SECRET_KEY": SECRET,
                   "NURTURE_PUBLIC_URL": "https://go.shop.example", **env})
    return rt


def _assert_one_clean_mail(raw: bytes, to: str) -> None:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    names = [k.lower() for k in parsed.keys()]
    assert "bcc" not in names and "reply-to" not in names
    assert names.count("content-type") == 1 and parsed.get_content_type() == "multipart/alternative"
    assert parsed["To"].addresses[0].addr_spec == to
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert "<h1>Pay here</h1>" not in parsed.get_body(("html",)).get_content()  # escaped, not markup


# ---------------------------------------------------------------- 1. header injection


def test_a_name_with_line_breaks_adds_no_header_to_the_smtp_mail(make_runtime, store, smtp_server):
    recorder = Recorder()
    rt = _smtp_runtime(make_runtime, smtp_server(recorder))
    # Straight into the store: the assembly must hold even for a name no import cleaned.
    cid = add_contact(store, "crlf@example.com", first_name=INJECTED, last_name="Doe\nX-Evil: 1")
    set_consent(store, cid)
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "sent", None)]
    ((mail_from, rcpt_tos, raw, _),) = recorder.received
    assert rcpt_tos == ["crlf@example.com"]
    _assert_one_clean_mail(raw, "crlf@example.com")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert "x-evil" not in [k.lower() for k in parsed.keys()]
    assert "\n" not in str(parsed["Subject"]) and parsed["Subject"].startswith("Hello Eve Bcc: evil@x.test")


def test_a_name_with_line_breaks_adds_no_header_to_the_eml_file(make_runtime, store):
    rt = make_runtime({"promo": PROMO}, templates={"email/promo.html": "<p>Hi {{ contact.first_name }}</p>"})
    rt.env["NURTURE_FROM_NAME"] = "Shop\r\nBcc: from-name@x.test"
    cid = add_contact(store, "crlf@example.com", first_name=INJECTED)
    set_consent(store, cid)
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    (eml,) = sorted((rt.data_dir / "outbox" / "email" / "promo").glob("*.eml"))
    _assert_one_clean_mail(eml.read_bytes(), "crlf@example.com")


# ---------------------------------------------------------------- 2. retries meet the checks again


class Scripted(Channel):
    """A stand-in for a real provider: answers each batch with the next scripted status
    ('retry' | 'unavailable' | 'sent') and records what it was handed."""
    name = "test.scripted"
    channel = "email"

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.batches: list[list[int]] = []

    @classmethod
    def from_env(cls, context):  # pragma: no cover - built directly by the tests
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.batches.append([m.message_pk for m in messages])
        status = self.script.pop(0) if self.script else "sent"
        return [DeliveryResult(m.message_pk, status, reason=None if status == "sent" else f"scripted_{status}")
                for m in messages]


def _scripted_runtime(make_runtime, script, journey=PROMO, **kwargs):
    rt = make_runtime({"promo": journey}, templates={"email/promo.html": "<p>Hi</p>"}, **kwargs)
    channel = Scripted(script)
    rt.channel_factory = lambda name: channel
    return rt, channel


def test_a_retry_after_the_smtp_server_was_down_is_not_sent_once_consent_is_revoked(make_runtime, store):
    port = _free_port()  # nothing listens yet: the first tick cannot connect
    rt = _smtp_runtime(make_runtime, port)
    cid = subscriber(store, "ann@example.com", first_name="Ann")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    assert [(m.status, m.attempts) for m in messages(store)] == [("queued", 0)]

    set_consent(store, cid, "email", "revoked", at=T0 + timedelta(minutes=2))
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        run_tick(rt, "promo", T0 + timedelta(hours=1))
    finally:
        controller.stop()
    assert recorder.received == []
    assert outcomes(store) == [("hello", "suppressed", "consent_revoked")]


def test_a_revocation_recorded_on_the_wall_clock_stops_a_retry_of_a_tick_in_the_past(make_runtime, store):
    rt, channel = _scripted_runtime(make_runtime, ["retry"])
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    set_consent(store, cid, "email", "revoked", at=datetime.now(timezone.utc))  # `nurture consent revoke`, today
    run_tick(rt, "promo", T0 + timedelta(hours=1))  # a tick whose logical clock is before the revocation
    assert outcomes(store) == [("hello", "suppressed", "consent_revoked")]
    assert len(channel.batches) == 1


def test_a_retry_due_inside_quiet_hours_in_kamchatka_waits_for_the_end_of_the_window(make_runtime, store):
    rt, channel = _scripted_runtime(make_runtime, ["retry"])
    cid = subscriber(store, "ann@example.com", timezone="Asia/Kamchatka")  # UTC+12
    add_event(store, cid, "signup", utc(2026, 3, 4, 6, 0))  # 18:00 local: outside quiet hours
    run_tick(rt, "promo", utc(2026, 3, 4, 6, 1))
    assert [(m.status, m.reason) for m in messages(store)] == [("queued", "scripted_retry")]

    run_tick(rt, "promo", utc(2026, 3, 4, 9, 12))  # 21:12 local: the retry is due, but quiet
    (row,) = messages(store)
    assert (row.status, row.reason, row.due_at) == ("queued", "quiet_hours", utc(2026, 3, 4, 20, 0))  # 08:00 local
    assert len(channel.batches) == 1

    run_tick(rt, "promo", utc(2026, 3, 4, 20, 1))
    assert outcomes(store) == [("hello", "sent", None)]
    assert len(channel.batches) == 2


def test_a_retry_of_an_address_that_bounced_meanwhile_is_suppressed(make_runtime, store):
    rt, channel = _scripted_runtime(make_runtime, ["retry"])
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    add_suppression(store, "hard_bounce", address="ann@example.com", at=T0 + timedelta(minutes=2))
    run_tick(rt, "promo", T0 + timedelta(hours=1))
    assert outcomes(store) == [("hello", "suppressed", "hard_bounce")]
    assert len(channel.batches) == 1


def test_a_retry_over_the_cap_is_deferred_until_the_window_has_room(make_runtime, store):
    policies = "frequency_caps:\n  - {channel: email, max: 1, per: 1d}\n"
    other = journey_yaml("other", "- id: news\n  send: {channel: email, template: promo, subject: News}",
                         trigger="{event: news}")
    rt = make_runtime({"promo": PROMO, "other": other}, templates={"email/promo.html": "<p>Hi</p>"},
                      policies=policies)
    channel = Scripted(["retry"])
    rt.channel_factory = lambda name: channel
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))  # queued, the provider asks to retry
    # While the retry is pending it counts against the cap: another journey waits.
    add_event(store, cid, "news", T0 + timedelta(minutes=2))
    run_tick(rt, "other", T0 + timedelta(minutes=3))
    assert [(m.journey, m.status, m.reason) for m in messages(store)] == [
        ("promo", "queued", "scripted_retry"), ("other", "deferred", "frequency_cap")]
    # A day later the first attempt has left the window: the other journey's mail goes …
    sent_at = T0 + timedelta(days=1, minutes=4)
    run_tick(rt, "other", sent_at)
    assert [m.status for m in messages(store, journey="other")] == ["deferred", "sent"]
    # … and the retry, due since long, now meets the cap like a first send would.
    run_tick(rt, "promo", sent_at + timedelta(minutes=1))
    (retry,) = messages(store, journey="promo")
    assert (retry.status, retry.reason, retry.due_at) == ("queued", "frequency_cap", sent_at + timedelta(days=1))
    assert len(channel.batches) == 2  # the first promo attempt and the other journey's mail
    run_tick(rt, "promo", sent_at + timedelta(days=1, minutes=1))
    assert [m.status for m in messages(store, journey="promo")] == ["sent"]


TWO_STEPS = journey_yaml("promo", """
- id: first
  send: {channel: email, template: promo, subject: First}
- id: pause
  wait: 2h
- id: second
  send: {channel: email, template: promo, subject: Second}
""")


def test_two_messages_for_one_contact_claimed_together_do_not_both_pass_a_cap(make_runtime, store):
    """Both steps' messages were put back while the channel was down; the tick the channel is
    back claims them together. Each message of a claim is left out of the stored history (its
    own row must not cap it), and each send step's group was checked apart: both passed a cap
    of one an hour. Now what goes is counted against the rest of the claim."""
    rt, channel = _scripted_runtime(make_runtime, ["unavailable", "unavailable"], journey=TWO_STEPS,
                                    policies="frequency_caps:\n  - {channel: email, max: 1, per: 1h}\n")
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))            # first: put back
    run_tick(rt, "promo", T0 + timedelta(hours=2, minutes=2))   # second: put back (first counted > 1h ago)
    assert [m.status for m in messages(store)] == ["queued", "queued"]
    back = T0 + timedelta(hours=3)
    run_tick(rt, "promo", back)
    rows = {m.step_id: (m.status, m.reason) for m in messages(store)}
    assert sorted(rows.values()) == [("queued", "frequency_cap"), ("sent", None)], rows
    run_tick(rt, "promo", back + timedelta(hours=1, minutes=1))  # the window has room again
    assert [m.status for m in messages(store)] == ["sent", "sent"]


def test_two_put_back_messages_of_one_step_for_a_contact_who_entered_twice_do_not_both_pass_a_cap(
        make_runtime, store):
    """One claim, one send step, the same contact twice (re-entry while the channel was down):
    the first that passes counts against the cap of the second."""
    journey = journey_yaml("promo", "- {id: hello, send: {channel: email, template: promo, subject: Hello}}",
                           extra="reentry: always")
    rt, channel = _scripted_runtime(make_runtime, ["unavailable", "unavailable"], journey=journey,
                                    policies="frequency_caps:\n  - {channel: email, max: 1, per: 1h}\n")
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))  # put back
    add_event(store, cid, "signup", T0 + timedelta(hours=2))
    run_tick(rt, "promo", T0 + timedelta(hours=2, minutes=1))  # entered again; put back (first counted > 1h ago)
    assert [(m.step_id, m.status) for m in messages(store)] == [("hello", "queued"), ("hello", "queued")]
    run_tick(rt, "promo", T0 + timedelta(hours=3))
    assert sorted((m.status, m.reason) for m in messages(store)) == [("queued", "frequency_cap"), ("sent", None)]


def test_a_message_queued_by_a_tick_that_died_before_delivering_meets_the_checks_again(make_runtime, store):
    """Only a message queued at this very tick's logical time skips the second look; one a
    previous tick queued and never delivered (its process stopped after the send transaction
    committed) is checked again when a later tick claims it."""
    from nurture.runtime.tick import STAGES, StageCall, TickOptions
    rt, channel = _scripted_runtime(make_runtime, [])
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    died = T0 + timedelta(minutes=1)
    for stage in STAGES:  # the stages of a tick with delivery partitions, up to its deliver stage
        if stage.name == "deliver":
            break
        stage.run(StageCall(rt, "promo", died, TickOptions(partitions=2)))
    assert [(m.status, m.attempts, m.claimed_at) for m in messages(store)] == [("queued", 0, None)]
    set_consent(store, cid, "email", "revoked", at=T0 + timedelta(minutes=5))
    run_tick(rt, "promo", T0 + timedelta(minutes=10))
    assert outcomes(store) == [("hello", "suppressed", "consent_revoked")]
    assert channel.batches == []


def test_a_retry_pushed_to_the_morning_and_a_fresh_message_do_not_both_pass_a_cap(make_runtime, store):
    """With delivery partitions: the retry waited for the end of quiet hours while the second
    step's message was queued; at 08:00 the fresh message (not checked again) and the retry
    (checked without the fresh one in its history) both went."""
    policies = ('quiet_hours:\n  email: {start: "21:00", end: "08:00"}\n'
                "frequency_caps:\n  - {channel: email, max: 1, per: 6h}\n")
    flow = TWO_STEPS.replace("wait: 2h", "wait: 30m")
    rt, channel = _scripted_runtime(make_runtime, ["retry"], journey=flow, policies=policies)
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", utc(2026, 3, 4, 20, 49))
    for at in (utc(2026, 3, 4, 20, 50), utc(2026, 3, 4, 21, 0), utc(2026, 3, 4, 21, 21), utc(2026, 3, 5, 8, 0)):
        run_tick(rt, "promo", at, partitions=2)
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 1, [(m.step_id, m.status, m.reason, m.sent_at) for m in messages(store)]


# ---------------------------------------------------------------- 4. the development secret


def test_smtp_without_a_secret_and_public_url_sends_nothing_and_leaves_the_messages_queued(
        make_runtime, store, smtp_server):
    recorder = Recorder()
    rt = _smtp_runtime(make_runtime, smtp_server(recorder))
    del rt.env["NURTURE_SECRET_KEY"], rt.env["NURTURE_PUBLIC_URL"]
    cid = subscriber(store, "ann@example.com", first_name="Ann")
    add_event(store, cid, "signup", T0)
    report = run_tick(rt, "promo", T0 + timedelta(minutes=1))
    assert recorder.received == []
    (row,) = messages(store)
    assert (row.status, row.attempts) == ("queued", 0)
    assert "NURTURE_SECRET_KEY" in row.reason
    unavailable = [(k, n) for k, n in report.outcomes.items() if k[1] == "unavailable"]
    assert len(unavailable) == 1 and unavailable[0][1] == 1  # reported once, for the channel

    rt.close()
    rt.env.update({"NURTURE_SECRET_KEY": SECRET})  # a secret but still no public URL
    run_tick(rt, "promo", T0 + timedelta(minutes=2))
    assert recorder.received == [] and "NURTURE_PUBLIC_URL" in messages(store)[0].reason

    rt.close()
    rt.env.update({"NURTURE_PUBLIC_URL": "https://go.shop.example"})
    run_tick(rt, "promo", T0 + timedelta(minutes=3))
    assert len(recorder.received) == 1 and outcomes(store) == [("hello", "sent", None)]


@pytest.mark.parametrize("secret", ["nurture-development-secret-change-me", "short"])
def test_a_development_or_short_secret_is_refused_for_real_delivery(make_runtime, store, smtp_server, secret):
    recorder = Recorder()
    rt = _smtp_runtime(make_runtime, smtp_server(recorder), NURTURE_SECRET_KEY=secret)
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    assert recorder.received == [] and [m.status for m in messages(store)] == ["queued"]


# ---------------------------------------------------------------- 12. the channel itself is down


def test_an_unavailable_channel_uses_up_no_attempts_and_stops_the_ticks_delivery(make_runtime, store):
    rt, channel = _scripted_runtime(make_runtime, ["unavailable"] * 6)
    rt.batch_size = 2
    for i in range(5):
        cid = subscriber(store, f"c{i}@example.com")
        add_event(store, cid, "signup", T0)
    for tick in range(6):
        report = run_tick(rt, "promo", T0 + timedelta(minutes=1 + 10 * tick))
        assert len(channel.batches) == tick + 1  # one try per tick, not one per batch
        # The first tick hands all five over as their send transactions commit (batches of 2,
        # 2, 1): one try, all five put back. The later ones claim one batch of the queue, find
        # the channel down and leave the other three unclaimed.
        assert [n for k, n in report.outcomes.items() if k[1] == "unavailable"] == [5 if tick == 0 else 2]
    assert all(m.status == "queued" and m.attempts == 0 for m in messages(store))
    run_tick(rt, "promo", T0 + timedelta(hours=2))  # the provider is back: everything goes
    assert [m.status for m in messages(store)] == ["sent"] * 5


def test_a_tick_that_finds_the_channel_unavailable_does_not_try_it_again_in_its_deliver_stage(
        make_runtime, store):
    """A tick in one process hands each batch to delivery as its send transaction commits; a
    channel found unusable there is not tried again by the same tick's deliver stage: one try
    per tick, the messages queued, no attempt used. (A pipelined tick's processes pass what
    they found on the same way — `channels_down` — but build their own channels, which this
    scripted one cannot reach.)"""
    workers = 1
    rt, channel = _scripted_runtime(make_runtime, ["unavailable"] * 3)
    for i in range(5):
        cid = subscriber(store, f"c{i}@example.com")
        add_event(store, cid, "signup", T0)
    for tick in range(2):
        report = run_tick(rt, "promo", T0 + timedelta(minutes=1 + 10 * tick), workers=workers)
        assert len(channel.batches) == tick + 1  # one try per tick
        assert [k[0] for k in report.outcomes if k[1] == "unavailable"] == ["channel:email"]
        assert [(m.status, m.attempts) for m in messages(store)] == [("queued", 0)] * 5
    run_tick(rt, "promo", T0 + timedelta(hours=2), workers=workers)  # still down for its one try
    run_tick(rt, "promo", T0 + timedelta(hours=3), workers=workers)  # back: everything goes
    assert sorted(m.status for m in messages(store)) == ["sent"] * 5


def test_a_pipelined_tick_tries_an_unusable_channel_at_most_once_per_delivery_process(make_runtime, store,
                                                                                       smtp_server, monkeypatch):
    """Delivery processes find SMTP unusable (no secret key to sign links). The process that
    took the one handed chunk puts its 5 messages back; the other process, which had not met
    the channel, tries it once if it claims them after that (5 more, put back — or none, if it
    claimed before they were put back); after that nobody in the tick tries it again — not the
    processes' later claims, not the tick's final claim, not its deliver stage
    (channels_down). Before, each of those tried: 25."""
    from nurture.runtime import tick as tick_module
    monkeypatch.setattr(tick_module, "LARGE_TICK", 1)  # 5 contacts count as "large" here
    recorder = Recorder()
    rt = _smtp_runtime(make_runtime, smtp_server(recorder))
    del rt.env["NURTURE_SECRET_KEY"]
    for i in range(5):
        add_event(store, subscriber(store, f"c{i}@example.com"), "signup", T0)
    report = run_tick(rt, "promo", T0 + timedelta(minutes=1), workers=2)
    assert recorder.received == []
    assert [(m.status, m.attempts) for m in messages(store)] == [("queued", 0)] * 5
    unavailable = [(k[0], n) for k, n in report.outcomes.items() if k[1] == "unavailable"]
    assert unavailable in ([("channel:email", 10)], [("channel:email", 5)])  # at most once per process


# ---------------------------------------------------------------- 10. re-queueing what was in doubt


def test_an_operator_requeues_delivery_unknown_messages_and_they_meet_the_checks_again(make_runtime, store):
    from nurture.messages import requeue_failed
    from nurture.store.tables import message_t
    rt, channel = _scripted_runtime(make_runtime, [])
    ann, bob = subscriber(store, "ann@example.com"), subscriber(store, "bob@example.com")
    with store.engine.begin() as conn:
        for cid, address in ((ann, "ann@example.com"), (bob, "bob@example.com")):
            conn.execute(message_t.insert().values(contact_id=cid, journey="promo", step_id="hello", attempt_key="send",
                                                   channel="email", template="promo", address=address, status="failed",
                                                   reason="delivery_unknown", due_at=T0, created_at=T0, attempts=1))
    set_consent(store, bob, "email", "revoked", at=T0)
    now = T0 + timedelta(days=1)  # daytime: outside quiet hours
    assert requeue_failed(store, "delivery_unknown", now, dry_run=True) == 2
    assert [m.status for m in messages(store)] == ["failed", "failed"]
    assert requeue_failed(store, "delivery_unknown", now) == 2
    run_tick(rt, "promo", now + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "sent", None), ("hello", "suppressed", "consent_revoked")]
    assert channel.batches == [[messages(store)[0].id]]


def test_a_message_put_back_by_an_unavailable_channel_is_checked_again_even_at_the_same_logical_time(
        make_runtime, store):
    rt, channel = _scripted_runtime(make_runtime, ["unavailable"])
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    at = T0 + timedelta(minutes=1)
    run_tick(rt, "promo", at)  # queued and claimed at once (its checks ran moments before), then put back
    assert [(m.status, m.attempts) for m in messages(store)] == [("queued", 0)]
    set_consent(store, cid, "email", "revoked", at=datetime.now(timezone.utc))
    run_tick(rt, "promo", at)  # the same --now again: the put-back message is not "fresh" any more
    assert outcomes(store) == [("hello", "suppressed", "consent_revoked")]
    assert len(channel.batches) == 1


class Garbled(Scripted):
    """A channel plug-in with bugs in its results: a provider id that is no text, an unknown
    status, a result for a message it was not given, one message answered twice, one not at all."""

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        first, second, third, fourth = messages
        return [DeliveryResult(first.message_pk, "sent", provider_id=["id-1"]),  # type: ignore[arg-type]
                DeliveryResult(second.message_pk, "delivered"),
                DeliveryResult(999_999, "sent"),
                DeliveryResult(third.message_pk, "sent", provider_id="id-3"),
                DeliveryResult(third.message_pk, "failed", reason="again")]


def test_what_a_channel_answers_never_stops_the_record_and_nothing_goes_twice(make_runtime, store):
    rt = make_runtime({"promo": PROMO}, templates={"email/promo.html": "<p>Hi</p>"})
    channel = Garbled([])
    rt.channel_factory = lambda name: channel
    for i in range(4):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    rows = [(m.address, m.status, (m.reason or "").split(":")[0], m.provider_id)
            for m in sorted(messages(store), key=lambda m: m.id)]
    assert rows == [("p0@example.com", "sent", "", None),
                    ("p1@example.com", "failed", "delivery_unknown", None),
                    ("p2@example.com", "sent", "", "id-3"),
                    ("p3@example.com", "failed", "delivery_unknown", None)]  # it may have gone: at most once


class Forgetful(Scripted):
    """A channel that answers for no message (or not even with a list), and knows afterwards
    which of them went: p0 did, p1 did not, p2 it cannot tell."""

    def __init__(self, answer):
        super().__init__([])
        self.answer = answer

    def send_batch(self, messages: Sequence[OutgoingMessage]):
        self.batches.append([m.message_pk for m in messages])
        return self.answer

    def was_delivered(self, message_pk: int, rfc_message_id: str):
        address = next(m.address for m in messages(self.store) if m.id == message_pk)
        return {"p0@example.com": True, "p1@example.com": False}.get(address)


@pytest.mark.parametrize("answer", [[], None, [DeliveryResult(10**9, "sent"), "sent"]], ids=["empty", "none", "junk"])
def test_a_message_a_channel_gave_no_result_for_is_resent_only_when_the_channel_says_it_did_not_go(
        make_runtime, store, answer):
    rt = make_runtime({"promo": PROMO}, templates={"email/promo.html": "<p>Hi</p>"})
    channel = Forgetful(answer)
    channel.store = store
    rt.channel_factory = lambda name: channel
    for i in range(3):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    run_tick(rt, "promo", T0 + timedelta(minutes=1))
    rows = [(m.address, m.status, m.reason) for m in sorted(messages(store), key=lambda m: m.id)]
    assert rows == [("p0@example.com", "sent", "reconciled"),
                    ("p1@example.com", "queued", "no_result_from_channel"),  # retried by a later tick
                    ("p2@example.com", "failed", "delivery_unknown: no_result_from_channel")]
    assert len(channel.batches) == 1


CART_STEPS = """
- id: reminder
  send: {channel: email, template: promo, subject: "Still thinking?"}
- {id: wait_1d, wait: 1d}
- id: last_call
  send: {channel: email, template: promo, subject: "Last call"}
"""
CART = journey_yaml("promo", CART_STEPS, trigger="{event: add_to_cart}", extra="exit_when: [{event: purchase}]")
CART_GOAL = journey_yaml("promo", CART_STEPS, trigger="{event: add_to_cart}",
                         extra="goal: {event: purchase, within: 3d}")


@pytest.mark.parametrize("journey, left", [(CART, "exited"), (CART_GOAL, "converted")], ids=["exit_when", "goal"])
def test_a_reminder_waiting_for_its_retry_never_reaches_someone_who_bought_meanwhile(
        make_runtime, store, journey, left):
    """The mail server deferred the cart reminder (a 4xx; or it was down: the message waits
    queued); the contact bought and left the journey before the retry. The retry's claim sent it
    anyway — a queued message's enrollment was never read again. It is now `skipped` with the
    reason the contact left (`exited` / `converted`), as `exit_when` before the step would have."""
    rt, channel = _scripted_runtime(make_runtime, ["retry"], journey=journey)
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "add_to_cart", utc(2026, 3, 4, 10, 0))
    run_tick(rt, "promo", utc(2026, 3, 4, 10, 1))
    assert [(m.status, m.reason) for m in messages(store)] == [("queued", "scripted_retry")]
    add_event(store, cid, "purchase", utc(2026, 3, 4, 10, 3))
    run_tick(rt, "promo", utc(2026, 3, 4, 11, 0))
    assert outcomes(store) == [("reminder", "skipped", left)] and len(channel.batches) == 1


VIP = journey_yaml("promo", """
- id: vip
  branch:
    when: {attribute: {plan: vip}}
    then:
      - id: vip_offer
        send: {channel: email, template: promo, subject: "Your VIP offer"}
      - {id: vip_done, exit: vip}
- id: regular
  send: {channel: email, template: promo, subject: "Hello"}
""")


def test_an_offer_before_the_journeys_own_exit_step_is_sent_when_the_mail_server_is_back(make_runtime, store):
    """`then: [send vip_offer, exit: vip]`: the exit step is taken in the tick of the send, so the
    enrollment is `exited` while the offer waits for the server. That is no reason to drop it —
    only `exit_when` and a goal, reached after it was queued, are."""
    rt, channel = _scripted_runtime(make_runtime, ["unavailable", "sent"], journey=VIP)
    cid = subscriber(store, "ann@example.com", attributes={"plan": "vip"})
    add_event(store, cid, "signup", utc(2026, 3, 4, 10, 0))
    run_tick(rt, "promo", utc(2026, 3, 4, 10, 1))  # the channel is down: the offer waits queued
    assert [o[1] for o in outcomes(store)] == ["queued"]
    run_tick(rt, "promo", utc(2026, 3, 4, 11, 0))
    assert outcomes(store) == [("vip_offer", "sent", None)]
