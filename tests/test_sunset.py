"""Specification: the sunset policy (`policies.yaml` `sunset: {after, without}`) is a guard of
the send promise: a marketing send to a contact known for longer than `after` who did none of
the `without` events within it is suppressed with reason `sunset` — at the first send and at
every retry; a new contact, an engaged one, transactional mail and a journey that declares
`reach_sunset: true` (re-engagement) are not stopped; without the key nothing changes."""
from __future__ import annotations

from datetime import timedelta

from nurture.runtime import run_tick
from nurture.send.guards.sunset import SunsetRule, sunset_contacts
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_event, journey_yaml, messages, outcomes, subscriber

NOW = utc(2026, 9, 1, 10)
LONG_AGO = NOW - timedelta(days=400)
SUNSET = DEFAULT_POLICIES + "sunset: {after: 180d, without: [email_open, email_click, purchase]}\n"
MAIL = journey_yaml("news", "- id: mail\n  send: {channel: email, template: hello, subject: Hi}")
RECEIPT = journey_yaml("receipt", "- id: mail\n  send: {channel: email, template: hello, subject: Receipt, "
                       "purpose: transactional}")
WINBACK = journey_yaml("winback", "- id: mail\n  send: {channel: email, template: hello, subject: Back}",
                       extra="reach_sunset: true")


def _signup(store, email, created=LONG_AGO):
    cid = subscriber(store, email, at=created)
    add_event(store, cid, "signup", NOW - timedelta(minutes=5))
    return cid


def test_a_long_silent_contact_is_suppressed_sunset_and_the_engaged_and_new_are_mailed(make_runtime, store):
    rt = make_runtime({"news": MAIL}, policies=SUNSET)
    silent = _signup(store, "silent@example.com")
    add_event(store, silent, "email_open", NOW - timedelta(days=181))  # just outside the window
    clicker = _signup(store, "clicker@example.com")
    add_event(store, clicker, "email_click", NOW - timedelta(days=179))
    newcomer = _signup(store, "new@example.com", created=NOW - timedelta(days=3))
    run_tick(rt, "news", NOW)
    by_contact = {m.contact_id: (m.status, m.reason) for m in messages(store, journey="news")}
    assert by_contact[silent] == ("suppressed", "sunset")
    assert by_contact[clicker][0] in ("queued", "sent") and by_contact[newcomer][0] in ("queued", "sent")


def test_known_since_uses_the_earliest_event_when_the_row_is_newer(store):
    recent_row = subscriber(store, "old@example.com", at=NOW - timedelta(days=2))
    add_event(store, recent_row, "page_view", NOW - timedelta(days=300))
    rule = SunsetRule(timedelta(days=180), ("email_open",))

    def stopped():
        with store.reading() as conn:
            return sunset_contacts(conn, [recent_row], rule, NOW)
    assert stopped() == {recent_row}
    add_event(store, recent_row, "email_open", NOW - timedelta(days=10))
    assert stopped() == set()


def test_transactional_mail_and_a_reengagement_journey_reach_sunset_contacts(make_runtime, store):
    rt = make_runtime({"receipt": RECEIPT, "winback": WINBACK}, policies=SUNSET)
    cid = _signup(store, "silent@example.com")
    run_tick(rt, "receipt", NOW)
    run_tick(rt, "winback", NOW)
    assert [(m.journey, m.status) for m in messages(store, contact_id=cid)] == [("receipt", "sent"),
                                                                               ("winback", "sent")]


def test_without_a_sunset_policy_silence_changes_nothing(make_runtime, store):
    rt = make_runtime({"news": MAIL})
    cid = _signup(store, "silent@example.com")
    run_tick(rt, "news", NOW)
    assert [m.status for m in messages(store, contact_id=cid)] == ["sent"]


def test_a_retry_is_checked_against_sunset_again(make_runtime, store):
    """Queued while engaged; the last open ages out of the window before the retry: suppressed."""
    from sqlalchemy import update

    from nurture.store.tables import message_t
    rt = make_runtime({"news": MAIL}, policies=SUNSET)
    cid = _signup(store, "fading@example.com")
    add_event(store, cid, "email_open", NOW - timedelta(days=179, hours=23))
    run_tick(rt, "news", NOW)
    with store.engine.begin() as conn:  # as if the channel had failed: back to the queue, retry in 2 h
        conn.execute(update(message_t).where(message_t.c.contact_id == cid).values(
            status="queued", attempts=1, due_at=NOW + timedelta(hours=2), sent_at=None))
    run_tick(rt, "news", NOW + timedelta(hours=2))
    assert outcomes(store, contact_id=cid) == [("mail", "suppressed", "sunset")]
