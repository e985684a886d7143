"""Specification: the send pipeline, exactly as in DESIGN — consent (re-read at send time),
suppression, reachability, quiet hours in the contact's zone, frequency caps across journeys —
then render and deliver; every outcome is a message row with a status and a reason code.
On SQLite and PostgreSQL.

Policies are the test defaults unless a test says otherwise: UTC; e-mail quiet 21:00–08:00,
SMS 20:00–09:00; caps e-mail 3/7d, SMS 2/7d, any 4/7d; on_cap defer; e-mail marketing needs
double opt-in."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from nurture.runtime import run_tick
from nurture.store.tables import message_t
from tests.conftest import utc
from tests.engine_fixtures import (add_contact, add_event, add_suppression, enrollments, journey_yaml, messages,
                                   outcomes, set_consent, subscriber)

T0 = utc(2026, 3, 4, 10, 0)


def send_step(step_id="hello", channel="email", purpose="marketing", template="hello"):
    subject = ", subject: Hello" if channel == "email" else ""
    return f"- id: {step_id}\n  send: {{channel: {channel}, template: {template}{subject}, purpose: {purpose}}}"


def one_send(**kwargs) -> dict:
    return {"j": journey_yaml("j", send_step(**kwargs))}


def enter(store, cid, at=T0, name="signup"):
    add_event(store, cid, name, at)


def eml_files(rt, journey="j"):
    return sorted((rt.data_dir / "outbox" / "email" / journey).glob("*.eml"))


# ---------------------------------------------------------------- consent


def test_a_revoke_after_enrollment_stops_the_send(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 1h}\n" + send_step())})
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    set_consent(store, cid, "email", "revoked", at=T0 + timedelta(minutes=30))
    run_tick(rt, "j", T0 + timedelta(hours=1, minutes=1))
    assert outcomes(store) == [("hello", "suppressed", "consent_revoked")]
    assert eml_files(rt) == []
    assert [e.status for e in enrollments(store)] == ["completed"]


@pytest.mark.parametrize("setup, reason", [
    (lambda s, c: None, "no_consent"),
    (lambda s, c: set_consent(s, c, "email", "pending", confirmed=False), "consent_pending"),
    (lambda s, c: set_consent(s, c, "email", "granted", confirmed=False), "not_double_opted_in"),
    (lambda s, c: (set_consent(s, c, "email", "granted"),
                   set_consent(s, c, "email", "revoked", at=T0 - timedelta(days=1))), "consent_revoked"),
])
def test_marketing_email_without_confirmed_consent_is_refused(make_runtime, store, setup, reason):
    rt = make_runtime(one_send())
    cid = add_contact(store, "ann@example.com")
    setup(store, cid)
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "suppressed", reason)]
    assert eml_files(rt) == []


def test_consent_granted_after_a_revoke_allows_the_send_again(make_runtime, store):
    rt = make_runtime(one_send())
    cid = add_contact(store, "ann@example.com")
    set_consent(store, cid, "email", "revoked", at=T0 - timedelta(days=2))
    set_consent(store, cid, "email", "granted", at=T0 - timedelta(days=1))
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "sent", None)]


@pytest.mark.parametrize("first, then, expected", [
    ("granted", "revoked", ("suppressed", "consent_revoked")),
    ("revoked", "granted", ("sent", None)),
])
def test_of_two_consent_rows_recorded_in_the_same_instant_the_one_written_last_is_the_state(
        make_runtime, store, first, then, expected):
    """An import's grant and a STOP in the same second: "the latest row" is by time, then by
    the order the ledger was written in."""
    rt = make_runtime(one_send())
    cid = add_contact(store, "ann@example.com")
    at = T0 - timedelta(days=1)
    set_consent(store, cid, "email", first, at=at)
    set_consent(store, cid, "email", then, at=at)
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [(m.status, m.reason) for m in messages(store)] == [expected]


def test_consent_recorded_at_the_very_moment_of_the_tick_counts(make_runtime, store):
    rt = make_runtime(one_send())
    cid = add_contact(store, "ann@example.com")
    now = T0 + timedelta(minutes=1)
    set_consent(store, cid, "email", "granted", at=now)  # recorded at or before `now` is in force
    enter(store, cid)
    run_tick(rt, "j", now)
    assert outcomes(store) == [("hello", "sent", None)]


def test_sms_marketing_needs_no_double_opt_in_by_default_policy(make_runtime, store):
    rt = make_runtime(one_send(channel="sms"))
    cid = add_contact(store, "ann@example.com", phone="+4915112345678")
    set_consent(store, cid, "sms", "granted", confirmed=False)
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "sent", None)]
    assert (rt.data_dir / "outbox" / "sms.jsonl").read_text().count("+4915112345678") == 1


def test_double_opt_in_follows_the_policy_per_channel(make_runtime, store):
    rt = make_runtime(one_send(channel="sms"), policies="double_opt_in: {sms: [marketing]}\n")
    cid = add_contact(store, "ann@example.com", phone="+4915112345678")
    set_consent(store, cid, "sms", "granted", confirmed=False)
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "suppressed", "not_double_opted_in")]


def test_consent_recorded_after_the_logical_now_does_not_count_yet(make_runtime, store):
    rt = make_runtime(one_send())
    cid = add_contact(store, "ann@example.com")
    set_consent(store, cid, "email", "granted", at=T0 + timedelta(hours=1))
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "suppressed", "no_consent")]


def test_transactional_is_exempt_from_marketing_consent_caps_and_quiet_hours(make_runtime, store):
    rt = make_runtime(one_send(purpose="transactional"))
    cid = add_contact(store, "ann@example.com")
    set_consent(store, cid, "email", "revoked")  # marketing consent revoked
    with store.engine.begin() as conn:  # four marketing e-mails today: every cap is full
        conn.execute(message_t.insert(), [dict(contact_id=cid, journey="other", step_id=f"s{i}", channel="email",
                                               template="hello", status="sent", due_at=T0, created_at=T0,
                                               counted_at=T0 - timedelta(hours=i + 1)) for i in range(4)])
    night = utc(2026, 3, 4, 23, 30)  # inside e-mail quiet hours (UTC policy)
    enter(store, cid, at=night)
    run_tick(rt, "j", night + timedelta(minutes=1))
    assert outcomes(store, journey="j") == [("hello", "sent", None)]
    (m,) = messages(store, journey="j")
    assert m.counted_at is None  # and it does not count against marketing caps


# ---------------------------------------------------------------- suppression and reachability


@pytest.mark.parametrize("suppression, purpose, expected", [
    (dict(reason="unsubscribed"), "marketing", ("suppressed", "unsubscribed")),
    (dict(reason="unsubscribed"), "transactional", ("sent", None)),
    (dict(reason="hard_bounce", channel="email"), "transactional", ("suppressed", "hard_bounce")),
    (dict(reason="complaint"), "marketing", ("suppressed", "complaint")),
    (dict(reason="sms_stop", channel="sms"), "marketing", ("sent", None)),  # STOP is for SMS only
])
def test_suppression_by_contact(make_runtime, store, suppression, purpose, expected):
    rt = make_runtime(one_send(purpose=purpose))
    cid = subscriber(store, "ann@example.com")
    add_suppression(store, contact_id=cid, **suppression)
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [(m.status, m.reason) for m in messages(store)] == [expected]


def test_suppression_by_address_matches_case_insensitively(make_runtime, store):
    rt = make_runtime(one_send(purpose="transactional"))
    cid = subscriber(store, "ann@example.com")
    add_suppression(store, reason="hard_bounce", address="Ann@Example.COM")
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "suppressed", "hard_bounce")]


def test_sms_to_a_contact_without_a_phone_is_skipped(make_runtime, store):
    rt = make_runtime(one_send(channel="sms"))
    cid = subscriber(store, "ann@example.com", channels=("sms",))
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "skipped", "no_phone")]
    assert [e.status for e in enrollments(store)] == ["completed"]  # the journey goes on


# ---------------------------------------------------------------- quiet hours


@pytest.mark.parametrize("tz, enters_at, opens_at", [
    ("Asia/Kathmandu", utc(2026, 3, 4, 15, 45), utc(2026, 3, 5, 2, 15)),  # 21:30 local → 08:00 (+05:45)
    ("Asia/Kolkata", utc(2026, 3, 4, 16, 0), utc(2026, 3, 5, 2, 30)),  # 21:30 local → 08:00 (+05:30)
    ("America/New_York", utc(2026, 3, 8, 3, 0), utc(2026, 3, 8, 12, 0)),  # 22:00 EST → 08:00 EDT (DST day)
    ("Europe/Berlin", utc(2026, 3, 28, 21, 0), utc(2026, 3, 29, 6, 0)),  # 22:00 CET → 08:00 CEST (DST day)
    ("Australia/Adelaide", utc(2026, 3, 4, 12, 30), utc(2026, 3, 4, 21, 30)),  # 23:00 → 08:00 (+10:30)
    ("Pacific/Chatham", utc(2026, 3, 4, 8, 15), utc(2026, 3, 4, 18, 15)),  # 22:00 → 08:00 (+13:45)
])
def test_a_message_due_in_quiet_hours_is_deferred_to_the_end_of_the_window_in_the_contacts_zone(
        make_runtime, store, tz, enters_at, opens_at):
    rt = make_runtime(one_send())
    cid = subscriber(store, "ann@example.com", timezone=tz)
    enter(store, cid, at=enters_at)
    run_tick(rt, "j", enters_at + timedelta(minutes=1))
    (deferred,) = messages(store)
    assert (deferred.status, deferred.reason, deferred.due_at, deferred.attempt_key) == (
        "deferred", "quiet_hours", opens_at, "defer:1")
    assert [(e.step_id, e.next_due_at) for e in enrollments(store)] == [("hello", opens_at)]
    run_tick(rt, "j", opens_at - timedelta(minutes=1))
    assert len(messages(store)) == 1
    run_tick(rt, "j", opens_at + timedelta(minutes=1))
    assert outcomes(store) == [("hello", "deferred", "quiet_hours"), ("hello", "sent", None)]
    assert len(eml_files(rt)) == 1


def test_contacts_of_different_zones_in_one_batch_each_get_their_own_quiet_hours(make_runtime, store):
    rt = make_runtime(one_send())
    at = utc(2026, 3, 4, 19, 0)
    zones = {"ny@example.com": "America/New_York",  # 14:00: goes now
             "tokyo@example.com": "Asia/Tokyo",  # 04:00: waits until 08:00 Tokyo
             "kolkata@example.com": "Asia/Kolkata",  # 00:30: waits until 08:00 Kolkata
             "berlin@example.com": "Europe/Berlin"}  # 20:00: goes now
    for address, tz in zones.items():
        enter(store, subscriber(store, address, timezone=tz), at=at)
    run_tick(rt, "j", at + timedelta(minutes=1))  # one tick, one batch
    assert {m.address: (m.status, m.due_at) for m in messages(store)} == {
        "ny@example.com": ("sent", at), "berlin@example.com": ("sent", at),
        "tokyo@example.com": ("deferred", utc(2026, 3, 4, 23, 0)),
        "kolkata@example.com": ("deferred", utc(2026, 3, 5, 2, 30))}


def test_sms_has_its_own_quiet_hours(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", send_step("mail") + "\n" + send_step("text", "sms"))})
    cid = subscriber(store, "ann@example.com", channels=("email", "sms"), phone="+4915112345678")
    at = utc(2026, 3, 4, 20, 30)  # after 20:00 (SMS quiet), before 21:00 (e-mail quiet), UTC policy
    enter(store, cid, at=at)
    run_tick(rt, "j", at + timedelta(minutes=1))
    assert [(m.step_id, m.status, m.reason, m.due_at) for m in messages(store)] == [
        ("mail", "sent", None, at), ("text", "deferred", "quiet_hours", utc(2026, 3, 5, 9, 0))]


def test_a_contact_without_a_zone_gets_the_policy_zone(make_runtime, store):
    policies = 'timezone: Europe/Berlin\nquiet_hours:\n  email: {start: "21:00", end: "08:00"}\n'
    rt = make_runtime(one_send(), policies=policies)
    cid = subscriber(store, "ann@example.com")
    at = utc(2026, 3, 4, 20, 30)  # 21:30 in Berlin
    enter(store, cid, at=at)
    run_tick(rt, "j", at + timedelta(minutes=1))
    assert [(m.status, m.due_at) for m in messages(store)] == [("deferred", utc(2026, 3, 5, 7, 0))]


def test_a_journey_may_override_quiet_hours(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", send_step(), extra='quiet_hours: {start: "09:00", end: "12:00"}')})
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [(m.status, m.reason, m.due_at) for m in messages(store)] == [("deferred", "quiet_hours", utc(2026, 3, 4, 12, 0))]


# ---------------------------------------------------------------- frequency caps

CAPS = """
timezone: UTC
quiet_hours: {}
frequency_caps:
  - {channel: email, max: 2, per: 1d}
  - {channel: any, max: 3, per: 1d}
on_cap: %s
double_opt_in: {}
"""
TWO_MAILS = send_step("mail_1") + "\n" + send_step("mail_2", template="other")


def cap_runtime(make_runtime, on_cap="defer"):
    return make_runtime({"one": journey_yaml("one", TWO_MAILS),
                         "two": journey_yaml("two", send_step("mail_3")),
                         "three": journey_yaml("three", send_step("sms_1", "sms") + "\n" + send_step("sms_2", "sms"))},
                        policies=CAPS % on_cap)


def test_frequency_caps_hold_across_journeys_per_channel_and_overall(make_runtime, store):
    rt = cap_runtime(make_runtime)
    cid = subscriber(store, "ann@example.com", channels=("email", "sms"), phone="+4915112345678")
    enter(store, cid)
    for journey in ("one", "two", "three"):
        run_tick(rt, journey, T0 + timedelta(minutes=1))
    by_step = {m.step_id: (m.status, m.reason) for m in messages(store)}
    assert by_step == {"mail_1": ("sent", None), "mail_2": ("sent", None),
                       "mail_3": ("deferred", "frequency_cap"),  # e-mail: 2 per day
                       "sms_1": ("sent", None),
                       "sms_2": ("deferred", "frequency_cap")}  # any channel: 3 per day
    (deferred,) = messages(store, step_id="mail_3")
    assert deferred.due_at == T0 + timedelta(days=1, minutes=1)  # when the first e-mail leaves the window


def test_a_journeys_own_cap_adds_to_the_policy_caps_and_never_replaces_them(make_runtime, store):
    """A journey's `frequency_cap` may only tighten: a cap of its own on SMS leaves the
    policy's e-mail cap in force for its e-mails."""
    rt = make_runtime({"one": journey_yaml("one", TWO_MAILS),
                       "two": journey_yaml("two", send_step("mail_3"),
                                           extra="frequency_cap: [{channel: sms, max: 1, per: 1d}]")},
                      policies=CAPS % "defer")
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "one", T0 + timedelta(minutes=1))
    run_tick(rt, "two", T0 + timedelta(minutes=1))
    assert outcomes(store, journey="two") == [("mail_3", "deferred", "frequency_cap")]  # e-mail: 2 per day


def test_a_capped_message_goes_out_when_the_window_has_room(make_runtime, store):
    rt = cap_runtime(make_runtime)
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "one", T0 + timedelta(minutes=1))
    run_tick(rt, "two", T0 + timedelta(minutes=1))
    run_tick(rt, "two", T0 + timedelta(hours=12))
    assert outcomes(store, journey="two") == [("mail_3", "deferred", "frequency_cap")]
    run_tick(rt, "two", T0 + timedelta(days=1, minutes=2))
    assert outcomes(store, journey="two") == [("mail_3", "deferred", "frequency_cap"), ("mail_3", "sent", None)]


def test_on_cap_skip_skips_the_message_and_the_journey_goes_on(make_runtime, store):
    rt = cap_runtime(make_runtime, on_cap="skip")
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "one", T0 + timedelta(minutes=1))
    run_tick(rt, "two", T0 + timedelta(minutes=1))
    assert outcomes(store, journey="two") == [("mail_3", "skipped", "frequency_cap")]
    assert [e.status for e in enrollments(store, journey="two")] == ["completed"]


def test_refused_messages_do_not_count_against_caps(make_runtime, store):
    rt = cap_runtime(make_runtime)
    cid = subscriber(store, "ann@example.com")
    add_suppression(store, reason="manual", contact_id=cid, at=T0)
    enter(store, cid)
    run_tick(rt, "one", T0 + timedelta(minutes=1))
    with store.engine.begin() as conn:
        from nurture.store.tables import suppression_t
        conn.execute(suppression_t.delete())
    run_tick(rt, "two", T0 + timedelta(minutes=2))
    assert outcomes(store, journey="two") == [("mail_3", "sent", None)]


def test_a_message_that_failed_after_its_claim_does_not_count_against_caps(make_runtime, store):
    """A claim stamps `counted_at`; a message that then failed keeps it, but only queued,
    sending and sent messages count (the status is checked on the rows read)."""
    rt = cap_runtime(make_runtime)
    cid = subscriber(store, "ann@example.com")
    with store.engine.begin() as conn:
        from nurture.store.tables import message_t
        for status in ("failed", "failed"):
            conn.execute(message_t.insert().values(contact_id=cid, journey="old", step_id="s", attempt_key="send",
                                                   channel="email", purpose="marketing", template="t", status=status,
                                                   due_at=T0, created_at=T0, counted_at=T0, attempts=1))
    enter(store, cid)
    run_tick(rt, "two", T0 + timedelta(minutes=1))
    assert outcomes(store, journey="two") == [("mail_3", "sent", None)]


# ---------------------------------------------------------------- the message log


def test_every_outcome_is_a_message_row_with_status_and_reason(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", send_step(), extra="holdout: 50%")})
    people = {
        "sent": subscriber(store, "ok@example.com"),
        "no_consent": add_contact(store, "nc@example.com"),
        "unsubscribed": subscriber(store, "un@example.com"),
        "quiet": subscriber(store, "quiet@example.com", timezone="Asia/Tokyo"),  # 19:00 UTC = 04:00 Tokyo
    }
    add_suppression(store, reason="unsubscribed", contact_id=people["unsubscribed"])
    at = utc(2026, 3, 4, 19, 0)
    for cid in people.values():
        enter(store, cid, at=at)
    run_tick(rt, "j", at + timedelta(minutes=1))
    rows = messages(store)
    assert len(rows) == len(people)
    assert all(m.status in ("sent", "suppressed", "deferred", "holdout") for m in rows)
    assert all(m.reason for m in rows if m.status != "sent")
    held = {e.contact_id for e in enrollments(store) if e.holdout}
    assert {m.contact_id for m in rows if m.status == "holdout"} == held


def test_the_unique_attempt_key_makes_a_second_insert_impossible(store):
    cid = add_contact(store, "ann@example.com")
    row = dict(contact_id=cid, journey="j", step_id="hello", attempt_key="send", channel="email", template="hello",
               status="queued", due_at=T0, created_at=T0)
    with store.engine.begin() as conn:
        from nurture.store.tables import enrollment_t
        eid = conn.execute(enrollment_t.insert().values(contact_id=cid, journey="j", version="v", status="active",
                                                        entered_at=T0, holdout=False, revenue=0.0, defer_count=0,
                                                        state={})).inserted_primary_key[0]
        conn.execute(message_t.insert().values(enrollment_id=eid, **row))
    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(message_t.insert().values(enrollment_id=eid, **row))
    assert len(messages(store)) == 1


def test_a_send_step_replayed_for_the_same_enrollment_sends_nothing_twice(make_runtime, store):
    """Two workers that both saw the enrollment at its send step: the second insert is ignored."""
    rt = make_runtime(one_send())
    cid = subscriber(store, "ann@example.com")
    enter(store, cid)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    with store.engine.begin() as conn:  # put the enrollment back on its send step, as a stale reader would
        from nurture.store.tables import enrollment_t
        conn.execute(enrollment_t.update().values(status="active", step_id="hello", next_due_at=T0, left_at=None))
    run_tick(rt, "j", T0 + timedelta(minutes=2))
    assert outcomes(store) == [("hello", "sent", None)]
    assert len(eml_files(rt)) == 1


def test_a_value_a_template_cannot_format_fails_its_message_alone_and_the_batch_is_sent(make_runtime, store):
    """`| money` of 1e300 raised babel's decimal.InvalidOperation, `/ 0` a ZeroDivisionError:
    neither was a render error, so the batch stopped after its rows were claimed, and no
    thank-you of that tick (nor of any later one) was sent. (`money` now formats 1e300.)"""
    thanks = journey_yaml("thanks", "- {id: thank_you, send: {channel: email, template: thanks, subject: Thanks}}",
                          trigger="{event: purchase}")
    rt = make_runtime({"thanks": thanks}, templates={
        "email/thanks.html": "<p>{{ event.value | money }} for {{ 100 / event.qty }}</p>"})
    cases = {"good@example.com": {"value": 20, "qty": 2}, "huge@example.com": {"value": 1e300, "qty": 1},
             "nan@example.com": {"value": "NaN", "qty": 1}, "zero@example.com": {"value": 5, "qty": 0},
             "also@example.com": {"value": 7, "qty": 1}}
    for address, props in cases.items():
        add_event(store, subscriber(store, address), "purchase", T0, props)
    run_tick(rt, "thanks", T0 + timedelta(minutes=1))
    got = {m.address: (m.status, (m.reason or "").split(":")[0]) for m in messages(store, journey="thanks")}
    assert got == {"good@example.com": ("sent", ""), "also@example.com": ("sent", ""),
                   "huge@example.com": ("sent", ""), "nan@example.com": ("failed", "render_error"),
                   "zero@example.com": ("failed", "render_error")}


def test_contacts_a_cap_of_zero_held_back_go_within_a_window_of_the_cap_being_lifted(make_runtime, store):
    """`frequency_cap: max: 0` pauses a channel (validate takes it); its deferral named a time 100
    years away, so lifting the pause by a live edit left the contacts waiting until 2126."""
    steps = "- id: hello\n  send: {channel: email, template: hello, subject: Hello}"
    paused = make_runtime({"j": journey_yaml("j", steps, extra="frequency_cap: [{channel: email, max: 0, per: 7d}]")})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(paused, "j", T0 + timedelta(minutes=1))
    (held,) = enrollments(store)
    assert held.next_due_at == T0 + timedelta(days=7, minutes=1)  # looked at again a window later
    lifted = make_runtime({"j": journey_yaml("j", steps)})
    run_tick(lifted, "j", T0 + timedelta(days=1))
    run_tick(lifted, "j", T0 + timedelta(days=8))
    assert [m.status for m in messages(store) if m.status == "sent"] == ["sent"]
