"""Double opt-in: a signup for a purpose that policies.yaml marks `double_opt_in` records
consent `pending` and queues a transactional confirmation request on the consent's own
channel; the person's answer grants the consent with `confirmed_at`; a pending consent that is
never confirmed expires (is revoked) after `policies.pending_consent_expires`.

- e-mail: a confirmation e-mail whose signed confirm link confirms; one reminder after 24 h;
- SMS: one text ("Reply START to confirm"); START / YES / UNSTOP texted back from the number
  confirms (nurture.web.webhooks). No reminder: a second text nobody asked for is no request;
- WhatsApp: no request (a business-initiated WhatsApp message needs an approved template and
  the opt-in it would ask for): the pending consent waits for the person's START.

`request_opt_in` is the one way a pending consent is asked for (signup events, the preference
center, lead forms). Requests are ordinary outbox rows (`message`) with no enrollment: journey
`double_opt_in`, step `confirm` or `reminder`, purpose `transactional`, and the attempt key
`consent:<ledger row id>` tying each to the pending consent it asks about (so a pending row
gets one request and at most one reminder). They are queued without the send checks and meet
them all when delivered by the send package like journey messages (nurture.send.system_mail,
nurture.send.deliver): suppression, reachability, quiet hours for a text, and whether their
pending consent is still the latest row.

Every change goes to the append-only consent ledger (nurture.consent_ledger, which also owns
reading its latest row) with its source, the policies' version and the time.
`hygiene(rt, now)` is the periodic part (reminders, expiry, delivery of queued requests);
the `hygiene` Prefect flow runs it.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

from sqlalchemy import String, and_, cast, exists, literal, select

from nurture.consent_ledger import (Proof, current_state, latest_rows, record_consent, record_consents,
                                    revocations_until)
from nurture.identities import erased_contacts
from nurture.runtime.context import Runtime
from nurture.send.deliver import deliver
from nurture.send.guards.pipeline import lock_contacts
from nurture.send.system_mail import REQUEST_TEMPLATES, SYSTEM_JOURNEY
from nurture.spec.models import Policies
from nurture.store.models import QUEUED
from nurture.store.tables import contact_t, event_t, message_t
from nurture.tokens import TokenClaims


REMINDER_AFTER = timedelta(hours=24)
# Events that mean "subscribe this address to marketing e-mail": a `signup`, or a
# `form_submit` whose properties say `opt_in: true`.
SIGNUP_EVENTS = ("signup", "form_submit")


def _queue(conn: Any, contact_id: int, address: str, step: str, consent_id: int, now: datetime,
           channel: str = "email") -> None:
    conn.execute(message_t.insert().values(
        enrollment_id=None, contact_id=contact_id, journey=SYSTEM_JOURNEY, step_id=step,
        attempt_key=f"consent:{consent_id}", channel=channel, purpose="transactional",
        template=REQUEST_TEMPLATES[channel][step], address=address, status=QUEUED, due_at=now, created_at=now,
        attempts=0))


_ADDRESS = {"email": contact_t.c.email, "sms": contact_t.c.phone, "whatsapp": contact_t.c.phone}


def request_opt_in(conn: Any, policies: Policies, contact_id: int, *, source: str, now: datetime,
                   channel: str = "email", purpose: str = "marketing") -> str:
    """A signup for (channel, purpose) — e-mail, SMS or WhatsApp. Returns what happened:
    `granted` (no double opt-in needed), `pending` (the request queued — an e-mail, a text;
    WhatsApp: none, START confirms), `already_granted`, `already_pending` (asked within
    `pending_consent_expires`: nothing more is recorded or sent — a second signup, a second
    lead form), or `unreachable` (double opt-in needed but the contact has no address on
    the channel: nothing recorded).

    Two signups of one person at once (two `nurture web` processes, a form posted twice) take
    turns: the contact row is locked before the ledger is read, so the second reads the
    first's `pending` row and answers `already_pending` — one confirmation e-mail, not two
    (PostgreSQL; SQLite's write transaction is exclusive already)."""
    lock_contacts(conn, [contact_id])
    state = current_state(conn, contact_id, channel, purpose)
    needs_confirmation = policies.needs_double_opt_in(channel, purpose)
    if state and state.status == "granted" and (state.confirmed_at or not needs_confirmation):
        return "already_granted"
    if not needs_confirmation:
        record_consent(conn, contact_id, channel, "granted", purpose=purpose, source=source, at=now,
                       policy_version=policies.version)
        return "granted"
    if state and state.status == "pending" and state.recorded_at > now - policies.pending_consent_expires:
        return "already_pending"
    address = conn.execute(select(_ADDRESS[channel]).where(contact_t.c.id == contact_id)).scalar()
    if not address:
        return "unreachable"
    consent_id = record_consent(conn, contact_id, channel, "pending", purpose=purpose, source=source, at=now,
                                policy_version=policies.version)
    if channel in REQUEST_TEMPLATES:
        _queue(conn, contact_id, address, "confirm", consent_id, now, channel)
    return "pending"


def confirm_opt_in(conn: Any, policies: Policies, claims: TokenClaims, *, now: datetime,
                   source: str = "double_opt_in:confirm", proof: Proof = Proof()) -> str:
    """The confirm link was followed: `confirm_pending` for the link's (contact, channel, purpose)."""
    return confirm_pending(conn, claims.contact_id, claims.channel, claims.purpose, now=now,
                           expires=policies.pending_consent_expires, source=source,
                           policy_version=policies.version, proof=proof)


def confirm_pending(conn: Any, contact_id: int, channel: str, purpose: str, *, now: datetime,
                    expires: Optional[timedelta], source: str, policy_version: str, proof: Proof = Proof()) -> str:
    """The person proved the address is theirs (the confirm link, or START / YES texted from
    the number): a pending consent becomes a grant with `confirmed_at`. Returns `confirmed`,
    `already_confirmed`, `expired` (pending for longer than `expires`, the policies'
    `pending_consent_expires` — None: until hygiene revokes it — nothing changes) or
    `not_pending` (no consent asked for, revoked meanwhile, e.g. unsubscribed, or the person
    was erased: nothing changes — an erased person's ledger still holds the pseudonymized
    pending row, and is never written to again)."""
    if erased_contacts(conn, [contact_id]):
        return "not_pending"
    state = current_state(conn, contact_id, channel, purpose)
    if state is None:
        return "not_pending"
    if state.status == "granted" and state.confirmed_at is not None:
        return "already_confirmed"
    if state.status != "pending":
        return "not_pending"
    if expires is not None and state.recorded_at <= now - expires:
        return "expired"
    record_consent(conn, contact_id, channel, "granted", purpose=purpose, source=source,
                   at=now, policy_version=policy_version, confirmed=True, proof=proof)
    return "confirmed"


def opt_ins_from_events(conn: Any, policies: Policies, event_ids: Iterable[str], *, now: datetime,
                        source: str = "web:/events") -> Counter:
    """Signups among newly tracked events (by event_id) → `request_opt_in` for e-mail marketing."""
    ids = list(event_ids)
    outcomes: Counter = Counter()
    if not ids:
        return outcomes
    rows = conn.execute(select(event_t.c.contact_id, event_t.c.name, event_t.c.properties)
                        .where(event_t.c.event_id.in_(ids), event_t.c.name.in_(SIGNUP_EVENTS))
                        .order_by(event_t.c.id)).all()
    signups = [(contact_id, name) for contact_id, name, properties in rows
               if name == "signup" or (properties or {}).get("opt_in") is True]
    # every signer-up locked at once, in id order (as the sends lock them), not one by one in
    # event order: two batches naming the same two people the other way round cannot deadlock
    lock_contacts(conn, [contact_id for contact_id, _ in signups])
    for contact_id, name in signups:
        outcomes[request_opt_in(conn, policies, contact_id, source=f"{source}:{name}", now=now)] += 1
    return outcomes


def expire_pending(conn: Any, policies: Policies, now: datetime) -> int:
    """Revoke every consent pending for longer than the policy allows; how many."""
    latest = latest_rows(now)
    stale = conn.execute(select(latest.c.contact_id, latest.c.channel, latest.c.purpose)
                         .where(latest.c.rank == 1, latest.c.status == "pending",
                                latest.c.recorded_at <= now - policies.pending_consent_expires)).all()
    return record_consents(conn, stale, "revoked", source="double_opt_in:expired", at=now,
                           policy_version=policies.version)


def queue_reminders(conn: Any, policies: Policies, now: datetime, wall: Optional[datetime] = None) -> int:
    """One reminder per pending e-mail consent (SMS gets none) whose confirmation went out over
    24 h ago — still the latest row by the send checks' wall-clock rule: what was recorded up to the later of `now`
    and the wall clock (`wall`, default: the real time). A hygiene run's logical time (its
    scheduled start) may lie before the wall clock; someone who revoked in between gets no
    reminder (it is queued and delivered at `now`, so delivery's own re-check does not see it)."""
    latest = latest_rows(revocations_until(now, wall))
    key = literal("consent:", String) + cast(latest.c.id, String)
    sent = message_t.alias("sent")
    reminded = message_t.alias("reminded")
    rows = conn.execute(
        select(latest.c.id, latest.c.contact_id, contact_t.c.email)
        .select_from(latest.join(contact_t, contact_t.c.id == latest.c.contact_id))
        .where(latest.c.rank == 1, latest.c.status == "pending", latest.c.channel == "email",
               latest.c.recorded_at <= now - REMINDER_AFTER,
               latest.c.recorded_at > now - policies.pending_consent_expires,
               contact_t.c.email.is_not(None),
               exists().where(and_(sent.c.journey == SYSTEM_JOURNEY, sent.c.step_id == "confirm",
                                   sent.c.attempt_key == key)),
               ~exists().where(and_(reminded.c.journey == SYSTEM_JOURNEY, reminded.c.step_id == "reminder",
                                    reminded.c.attempt_key == key)))).all()
    for consent_id, contact_id, email in rows:
        _queue(conn, contact_id, email, "reminder", consent_id, now)
    return len(rows)


def hygiene(rt: Runtime, now: datetime) -> Counter:
    """The periodic part: expire stale pending consents, queue reminders, deliver queued
    requests (e-mail and texts). Returns counts for the flow's report."""
    policies = rt.project.policies
    report: Counter = Counter()
    with rt.store.engine.begin() as conn:
        report["expired"] = expire_pending(conn, policies, now)
        report["reminders_queued"] = queue_reminders(conn, policies, now)
    for (step, outcome, reason), n in deliver(rt, now, SYSTEM_JOURNEY).items():
        report[f"{step}:{outcome}"] += n
    return report
