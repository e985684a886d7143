"""The right to erasure (GDPR Art. 17): everything Nurture holds about a person, gone — in the
store, in files, at every audience and CRM list, and at CRMs that offer a GDPR delete.

One request names people by e-mail (`erase_emails`), by e-mail or phone number
(`erase_people`: the CLI, `POST /privacy/erase` — a contact Nurture knows only by phone, a
phone-only lead, is erased by its number) or by contact id (`erase_contacts`: a CRM's
privacy-deletion webhook). A number is found like an address: in the `phone` column and among
the phone identities (`contact_identity`); a number several contacts share names no one person
and is answered `invalid` (name them by e-mail). Per person, in one transaction (the contact
row locked, so two erasures of the same person serialize):

- the contact row stays — its id keeps foreign keys and report counts — with e-mail, phone,
  names, time zone, country, locale, attributes and score removed (`lifecycle_stage` and the
  timestamps stay: they identify no one);
- events: properties emptied but for the amounts the reports read (`value`, `discount`, a
  currency, a coupon code a journey declares: nurture.privacy.kept_amounts), `event_id`
  replaced by a hash of itself (a provider's id can embed an address); name and time stay, so
  funnels still count and revenue and offer costs still add up;
- lead sources: the person's first and last touch (`contact_touch`: UTM parameters and the
  ad platforms' click ids, which identify a click of theirs) deleted;
- messages (the log): address, subject and any reason text naming the address removed;
  statuses, times, journeys and steps stay, so reports still add up; a message still queued
  is recorded `suppressed` with reason `erased`; active enrollments exit (reason `erased`);
- the consent ledger: the person's rows pseudonymized and one hashed tombstone appended
  (`nurture.consent_ledger.erase_consents`);
- suppressions: addresses replaced by their hash; one `erased` suppression (every channel,
  address = the hash) per identifier of the person — the e-mail address (or, without one, the
  number the request named), every other address and every E.164 number it was known by — that
  `nurture.privacy.tombstones.erased_among` / `erased_phones` find on every ingest, so the person
  is never re-created silently, not even by a phone-only lead;
- handovers: score zeroed, reason text scrubbed; a handover still pending is never delivered
  (`failed`, reason `erased`); sync_run error texts naming the address are scrubbed;
- an `erasure` row (`in_progress`) naming who asked, when and why.

Then, outside the transaction: a message of the person that a tick had already handed to its
channel (`sending`) is waited for (up to `AT_CHANNEL_WAIT`), its address and subject removed
once it is recorded — the tick writes the rendered subject then — and its file with the rest; one
still at the channel after that is reported pending, and the next `erase` finishes it. The
person's outbox files are deleted (`files`), every
acknowledged audience/CRM-list membership is removed through the sync's removal path
(`nurture.segments.removal`) — at once, not at the next nightly sync — and every configured CRM
with a GDPR delete is asked to delete the person (`crm`). The `erasure` row is completed with
the counts per kind and what is still pending (a destination that failed: its membership row
stays, and the next nightly sync removes it, since an erased contact matches no segment; the
next `erase` of the same address retries it too).

Erasing again changes nothing more: the answer is `already_erased` (only outstanding downstream
work is retried), and the request is logged like any other. An erasure a crash interrupted after
its store transaction (its row still `in_progress`) owes its whole downstream part: the next
`erase` of the person does it as the first request would have (files, audiences, every CRM's
GDPR delete) and completes that row (`erased`, with the counts and what is still pending). An
address nothing is held about is `not_found`, and nothing is stored about it but the log row
(without the address).
"""
from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Iterable, Optional, Sequence

from sqlalchemy import String, and_, bindparam, cast, false, func, or_, select

from nurture.consent_ledger import erase_consents, suppress
from nurture.identities import find_by_identity, phone_holders
from nurture.ingest import normalize_email, normalize_phone
from nurture.privacy.crm import PersonErasure, crm_erasers
from nurture.privacy.files import remove_outbox
from nurture.privacy.kept_amounts import declared_codes, kept_properties
from nurture.privacy.models import ALREADY_ERASED, ERASED, IN_PROGRESS, NOT_FOUND, erasure_t
from nurture.privacy.tombstones import ERASED_REASON, erased_suppression, subject_hash
from nurture.redaction import redact, secrets_in
from nurture.registry import IntegrationContext, IntegrationError, SyncMember
from nurture.runtime.sql import for_update
from nurture.segments.removal import forget_members, remove_members, resolve_target
from nurture.segments.sync import default_factory
from nurture.send.reconcile import STUCK_AFTER
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.models import QUEUED, SENDING, SUPPRESSED
from nurture.store.tables import (consent_t, contact_t, deal_address_t, deal_t, enrollment_t, identity_t, event_t, handover_t, membership_t, message_t,
                                  suppression_t, sync_run_t, touch_t)
from nurture.store.times import aware

INVALID = "invalid"  # an outcome of a request only: not an e-mail address or phone number, or a shared number
EMAIL, PHONE = "email", "phone"
DEFAULT_REASON = "request"
REASON_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
SCRUBBED = "[erased]"
# The contact columns that name or locate the person (the row's id, lifecycle stage and timestamps stay).
PERSONAL_COLUMNS = ("email", "phone", "first_name", "last_name", "timezone", "country", "locale", "external_id")
Factory = Callable[[str, IntegrationContext], Any]


@dataclass
class ErasureResult:
    """The answer for one requested person. `request` is what the caller named them by (the
    address as given, or `<crm> record <id>`); it is never stored."""
    request: str
    outcome: str  # erased | already_erased | not_found | invalid
    erasure_id: Optional[int] = None
    removed: dict[str, int] = field(default_factory=dict)  # kind -> how many records
    destinations: dict[str, str] = field(default_factory=dict)  # target / crm:<name> -> removed | deleted | …
    pending: list[str] = field(default_factory=list)  # what failed and is retried later
    error: Optional[str] = None  # why the request is invalid
    erased_at: Optional[datetime] = None

    def as_dict(self) -> dict:
        return {"request": self.request, "outcome": self.outcome, "erasure_id": self.erasure_id,
                "removed": dict(self.removed), "destinations": dict(self.destinations),
                "pending": list(self.pending), "error": self.error,
                "erased_at": self.erased_at.isoformat() if self.erased_at else None}


@dataclass
class _Subject:
    result: ErasureResult
    email: Optional[str]  # normalized; None when only a contact id or a phone number is known and it has no e-mail
    hashed: Optional[str]
    named_phone: Optional[str] = None  # the E.164 number the request named the person by
    contact_id: Optional[int] = None
    by_id: bool = False  # named by contact id (a CRM webhook), not by an address
    first: bool = False  # erased by this request
    phone: Optional[str] = None
    email_messages: list[tuple[int, str]] = field(default_factory=list)  # (message id, journey)
    sms_messages: list[int] = field(default_factory=list)
    whatsapp_messages: list[int] = field(default_factory=list)
    handovers: list[int] = field(default_factory=list)
    at_channel: list[int] = field(default_factory=list)  # messages `sending` at the erasure: a tick's channel has them
    retry_crm: set[str] = field(default_factory=set)  # CRMs whose GDPR delete is still pending
    interrupted: list[int] = field(default_factory=list)  # the person's `in_progress` erasure rows (a crash)
    aliases: list[str] = field(default_factory=list)  # the person's other addresses and numbers (contact_identity)
    removed: Counter = field(default_factory=Counter)
    pending: list[str] = field(default_factory=list)

    @property
    def owes_everything(self) -> bool:
        """The whole downstream part is due: the person is erased by this request, or an
        erasure of theirs was interrupted after its store part (a crash)."""
        return self.first or bool(self.interrupted)


def check_reason(reason: str) -> str:
    """A reason is a short label (it is stored): lowercase letters, digits and _ . : - ."""
    if not REASON_PATTERN.match(reason or ""):
        raise ValueError(f"reason '{reason[:70]}' must be a short label: lowercase letters, digits and _ . : - "
                         "(at most 64 characters), e.g. request or art17-ticket-4711")
    return reason


def identifier(given: str, default_country: Optional[str] = None) -> tuple[str, str]:
    """What a request names a person by: ("email", the normalized address) or ("phone", the
    E.164 number — a national number is read in `default_country`, NURTURE_DEFAULT_COUNTRY);
    ValueError saying why it is neither."""
    text = str(given).strip()
    if "@" in text:
        return EMAIL, normalize_email(text)
    try:
        return PHONE, normalize_phone(text, default_country)
    except ValueError as exc:
        hint = "" if default_country or text.startswith("+") else \
            " (write the number with +country code, or set NURTURE_DEFAULT_COUNTRY)"
        raise ValueError(f"not an e-mail address or phone number: {exc}{hint}") from None


def erase_emails(store: Store, project: ProjectSpec, emails: Iterable[str], *, context: IntegrationContext,
                 actor: str, reason: str = DEFAULT_REASON, now: Optional[datetime] = None,
                 factory: Optional[Factory] = None, gone_from: Collection[str] = ()) -> list[ErasureResult]:
    """Erase the people with these e-mail addresses; one result per address given (an address
    given twice is answered twice, erased once). `gone_from`: destination names where the
    person's records are already gone (the CRM that asked for the erasure) — their memberships
    are forgotten without a request, and they are not asked for a GDPR delete."""
    return _erase_named(store, project, emails, phones=False, default_country=None, context=context, actor=actor,
                        reason=reason, now=now, factory=factory, gone_from=gone_from)


def erase_people(store: Store, project: ProjectSpec, given: Iterable[str], *, context: IntegrationContext,
                 actor: str, default_country: Optional[str] = None, reason: str = DEFAULT_REASON,
                 now: Optional[datetime] = None, factory: Optional[Factory] = None,
                 gone_from: Collection[str] = ()) -> list[ErasureResult]:
    """Erase the people named by e-mail address or phone number (`identifier`); one result per
    name given, as `erase_emails`. A person with an e-mail address named by their number is
    erased as if named by the address."""
    return _erase_named(store, project, given, phones=True, default_country=default_country, context=context,
                        actor=actor, reason=reason, now=now, factory=factory, gone_from=gone_from)


def _erase_named(store: Store, project: ProjectSpec, given: Iterable[str], *, phones: bool,
                 default_country: Optional[str], context: IntegrationContext, actor: str, reason: str,
                 now: Optional[datetime], factory: Optional[Factory], gone_from: Collection[str]) -> list[ErasureResult]:
    check_reason(reason)
    subjects: list[_Subject] = []
    answers: list[ErasureResult] = []
    seen: dict[tuple[str, str], _Subject] = {}
    for name in given:
        try:
            kind, value = identifier(str(name), default_country) if phones else (EMAIL, normalize_email(str(name)))
        except ValueError as exc:
            answers.append(ErasureResult(str(name), INVALID, error=str(exc)))
            continue
        if (kind, value) in seen:
            answers.append(seen[(kind, value)].result)
            continue
        if kind == EMAIL:
            subject = _Subject(ErasureResult(str(name), NOT_FOUND), value, subject_hash(value))
        else:
            subject = _Subject(ErasureResult(str(name), NOT_FOUND), None, subject_hash(value), named_phone=value)
        seen[(kind, value)] = subject
        subjects.append(subject)
        answers.append(subject.result)
    _erase(store, project, subjects, context=context, actor=actor, reason=reason, now=now, factory=factory,
           gone_from=set(gone_from))
    return answers


def erase_contacts(store: Store, project: ProjectSpec, requests: Sequence[tuple[str, int]], *,
                   context: IntegrationContext, actor: str, reason: str = DEFAULT_REASON,
                   now: Optional[datetime] = None, factory: Optional[Factory] = None,
                   gone_from: Collection[str] = ()) -> list[ErasureResult]:
    """Erase contacts named by id: `requests` is (label, contact id) — the label (e.g.
    `hubspot record 1001`) is what the result shows. See `erase_emails`."""
    check_reason(reason)
    subjects: list[_Subject] = []
    by_id: dict[int, _Subject] = {}
    answers: list[ErasureResult] = []
    with store.reading() as conn:
        emails = dict(conn.execute(select(contact_t.c.id, contact_t.c.email).where(
            contact_t.c.id.in_([cid for _, cid in requests]))).all()) if requests else {}
    for label, cid in requests:
        if cid in by_id:
            answers.append(by_id[cid].result)
            continue
        email = emails.get(cid)
        subject = _Subject(ErasureResult(label, NOT_FOUND), email, subject_hash(email) if email else None,
                           contact_id=cid if cid in emails else None, by_id=True)
        by_id[cid] = subject
        subjects.append(subject)
        answers.append(subject.result)
    _erase(store, project, subjects, context=context, actor=actor, reason=reason, now=now, factory=factory,
           gone_from=set(gone_from))
    return answers


def contacts_for_crm_record(store: Store, destination: str, record_id: str) -> list[int]:
    """The contacts a CRM knows under `record_id`: from the memberships its lists acknowledged
    (payload `record_id`) and from handovers delivered to it (`external_id` `contact:<id> …`)."""
    record_id = str(record_id)
    with store.reading() as conn:
        # A membership acknowledged for a contact as it stood before this contact existed
        # (`contact_version`: the contact's updated_at at the acknowledgement, on the contact's
        # own clock) is another person's: a row whose contact is gone (a purged never-confirmed
        # sign-up, left for the sync to remove) saw its id given to someone new on SQLite before
        # migration 0029, and such a row may still be held.
        ids = {cid for (cid,) in conn.execute(
            select(membership_t.c.contact_id).join(contact_t, contact_t.c.id == membership_t.c.contact_id)
            .where(membership_t.c.target.startswith(f"{destination}:", autoescape=True),
                   membership_t.c.payload["record_id"].as_string() == record_id,
                   membership_t.c.contact_version >= contact_t.c.created_at))}
        ids.update(cid for (cid,) in conn.execute(select(handover_t.c.contact_id).where(
            handover_t.c.destination == destination,
            or_(handover_t.c.external_id == f"contact:{record_id}",
                handover_t.c.external_id.startswith(f"contact:{record_id} ", autoescape=True)))))
    return sorted(ids)


# ---------------------------------------------------------------- the steps


def _erase(store: Store, project: ProjectSpec, subjects: list[_Subject], *, context: IntegrationContext, actor: str,
           reason: str, now: Optional[datetime], factory: Optional[Factory], gone_from: set[str]) -> None:
    now = now or datetime.now(timezone.utc)
    policy_version = project.policies.version if project.policies else ""
    codes = declared_codes(project)
    for subject in subjects:
        with store.engine.begin() as conn:
            _in_store(conn, subject, now=now, actor=actor, reason=reason, policy_version=policy_version, codes=codes)
    active = [s for s in subjects if s.contact_id is not None and s.result.outcome != NOT_FOUND]
    _after_the_channel(store, active)
    for subject in active:
        try:
            subject.removed.update(remove_outbox(context.data_dir, emails=subject.email_messages,
                                                 sms=subject.sms_messages, whatsapp=subject.whatsapp_messages,
                                                 handovers=subject.handovers,
                                                 phone=subject.phone if subject.first else None))
        except OSError as exc:  # a file that cannot be changed: reported, retried by the next erase
            subject.pending.append(f"files: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}"[:300])
    secrets = secrets_in(context.env)
    make = factory or default_factory
    _leave_audiences(store, project, active, context, make, gone_from, secrets)
    _crm_delete(project, active, context, make, gone_from, secrets)
    with store.engine.begin() as conn:
        # provider replies may quote the person: neither the log nor a sync_run keeps that
        quoted = sorted({n for subject in active for n in _needles(subject)})
        for start in range(0, len(quoted), 50):
            _scrub_sync_runs(conn, quoted[start:start + 50])
        for subject in subjects:
            subject.pending = [_scrub(item, _needles(subject)) for item in subject.pending]
            _record(conn, subject, now=now, actor=actor, reason=reason)


AT_CHANNEL_WAIT = 60.0  # seconds an erasure waits for a tick's channel to give back the person's messages
_POLL = 0.1


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _after_the_channel(store: Store, subjects: Sequence[_Subject]) -> None:
    """Messages a tick had handed to its channel when the person was erased (`sending`): the
    tick records them afterwards — with the rendered subject — and the file channel writes
    their file then. Wait until they are recorded (at most AT_CHANNEL_WAIT), then remove
    address and subject again; their files go with the person's others. Still at the channel
    after that (a stalled tick): reported pending, and the next `erase` of the person does it."""
    waiting = {mid: s for s in subjects for mid in s.at_channel}
    if not waiting:
        return
    deadline = time.monotonic() + AT_CHANNEL_WAIT
    while True:
        with store.reading() as conn:
            still = set(conn.execute(select(message_t.c.id).where(
                message_t.c.id.in_(sorted(waiting)), message_t.c.status == SENDING)).scalars())
        if not still or time.monotonic() >= deadline:
            break
        _pause(_POLL)
    with store.engine.begin() as conn:  # their record may quote the address in its reason, too
        for subject in subjects:
            done = [mid for mid in subject.at_channel if mid not in still]
            if done:
                _pseudonymize_messages(conn, message_t.c.id.in_(done), _needles(subject))
    for mid in sorted(still):
        subject = waiting[mid]
        note = "messages: still at a tick's channel; run the erasure again once the tick is done"
        if note not in subject.pending:
            subject.pending.append(note)


def _needles(subject: _Subject) -> list[str]:
    return list(dict.fromkeys(n for n in (subject.email, subject.phone, subject.named_phone, *subject.aliases)
                              if n and len(n) >= 5))


def _find(conn: Any, subject: _Subject) -> Optional[Any]:
    """The contact row to erase (locked), or None; sets `contact_id` of an erased person."""
    columns = (contact_t.c.id, contact_t.c.email, contact_t.c.phone)
    if subject.by_id:
        if subject.contact_id is None:
            return None
        row = conn.execute(for_update(select(*columns).where(contact_t.c.id == subject.contact_id), conn)).first()
        if row is None:
            subject.contact_id = None
            return None
        if row.email is None:  # no address now: an erased contact, or one that never had one
            gone = conn.execute(select(suppression_t.c.address, suppression_t.c.created_at).where(
                suppression_t.c.contact_id == row.id, suppression_t.c.reason == ERASED_REASON)
                .order_by(suppression_t.c.id).limit(1)).first()
            if gone is not None:
                subject.hashed = gone.address
                subject.result.erased_at = gone.created_at
                return None
        return row
    if subject.named_phone is not None:
        # the contact of this number — its own, or one it was known by (contact_identity)
        holders = phone_holders(conn, subject.named_phone)
        if len(holders) > 1:  # a shared number names no one person: erasing all would erase the others
            subject.result.outcome = INVALID
            subject.result.error = (f"{len(holders)} contacts are known by this number: name the person by "
                                    "e-mail address")
            return None
        known = holders[0] if holders else None
    else:
        # the contact of this address — its own, or a second one it is known by (contact_identity)
        known = find_by_identity(conn, "email", subject.email)
    row = (conn.execute(for_update(select(*columns).where(contact_t.c.id == known), conn)).first()
           if known is not None else None)
    if row is not None and row.email and row.email != subject.email:  # named by a number or a second address
        subject.aliases.append(subject.email or subject.named_phone)
        subject.email, subject.hashed = row.email, subject_hash(row.email)
    if row is not None:
        subject.contact_id = row.id
        return row
    gone = erased_suppression(conn, subject.hashed)
    if gone is not None:
        subject.contact_id = gone.contact_id
        subject.result.erased_at = gone.created_at
    return None


def _in_store(conn: Any, subject: _Subject, *, now: datetime, actor: str, reason: str, policy_version: str,
              codes: Collection[str] = ()) -> None:
    row = _find(conn, subject)
    if row is None:
        if subject.result.outcome == INVALID:
            return
        if subject.result.erased_at is not None:
            subject.result.outcome = ALREADY_ERASED
            if subject.contact_id is not None:  # (None: an address only deals held, erased before)
                conn.execute(for_update(select(contact_t.c.id).where(contact_t.c.id == subject.contact_id),
                                        conn)).first()
                _collect_files(conn, subject, now)
                _sweep(conn, subject, now=now, needles=_needles(subject), codes=codes)
                _pending_crms(conn, subject)
            subject.interrupted = _interrupted(conn, subject)
        elif subject.email is not None and not subject.by_id:
            _waiting_deals(conn, subject, now=now, actor=actor, reason=reason)
        return
    cid = subject.contact_id = row.id
    subject.first = True
    subject.result.outcome = ERASED
    subject.result.erased_at = now
    subject.phone = row.phone
    if subject.email is None and row.email:
        subject.email, subject.hashed = row.email, subject_hash(row.email)
    removed = subject.removed
    _collect_files(conn, subject, now)
    # suppressions: hashed addresses (a phone another contact shares keeps its suppression) — read
    # before the sweep removes the phone from the contact row
    removed["suppressions"] = _hash_suppressions(conn, cid, subject.email, row.phone)
    suppress(conn, reason=ERASED_REASON, at=now, contact_id=cid, address=subject.hashed, channel=None)
    # every other address and every number of the person is blocked from re-creating them too
    # (a phone-only lead, import row or message: tombstones.erased_phones) — read before the sweep
    # removes the identities
    known = conn.execute(select(identity_t.c.value).where(identity_t.c.contact_id == cid,
                                                          identity_t.c.kind.in_(("email", "phone")))).scalars().all()
    for alias in (row.phone, subject.named_phone, *known):
        if alias and subject_hash(alias) != subject.hashed and alias not in subject.aliases:
            subject.aliases.append(alias)
    for alias in dict.fromkeys(subject_hash(a) for a in subject.aliases):
        if alias != subject.hashed:
            suppress(conn, reason=ERASED_REASON, at=now, contact_id=cid, address=alias, channel=None)
    # the consent ledger: pseudonymized rows and one hashed tombstone
    removed["consents"] = erase_consents(conn, cid, subject_hash=subject.hashed, reason=reason, at=now,
                                         policy_version=policy_version)
    _sweep(conn, subject, now=now, needles=_needles(subject), codes=codes)
    subject.result.erasure_id = conn.execute(erasure_t.insert().values(
        contact_id=cid, subject_hash=subject.hashed, actor=actor, reason=reason, outcome=IN_PROGRESS,
        removed=_counts(removed), pending=[], requested_at=now, completed_at=None)).inserted_primary_key[0]


def _sweep(conn: Any, subject: _Subject, *, now: datetime, needles: Sequence[str], codes: Collection[str] = ()) -> None:
    """Remove the person from every row that still names them — at the erasure, and again at
    every later `erase` of them (a straggler: an event ingested in the very instant of the
    erasure). Counts only what it changed, so a second sweep of an erased contact counts nothing."""
    cid = subject.contact_id
    removed = subject.removed

    # messages: the log stays, pseudonymized (statuses, times, journeys and steps stay)
    removed["messages_cancelled"] += conn.execute(message_t.update().where(
        message_t.c.contact_id == cid, message_t.c.status == QUEUED)
        .values(status=SUPPRESSED, reason=ERASED_REASON)).rowcount
    messages, texts = _pseudonymize_messages(conn, message_t.c.contact_id == cid, needles)
    removed["messages"] += messages
    removed["texts_scrubbed"] += texts

    # events: names and times stay, and the amounts the reports read (kept_amounts); every other
    # property and the provider ids go
    events = [(e, kept_properties(e.properties, codes))
              for e in conn.execute(select(event_t.c.id, event_t.c.event_id, event_t.c.properties)
                                    .where(event_t.c.contact_id == cid))]
    events = [(e, kept) for e, kept in events
              if (e.properties or {}) != kept or not str(e.event_id).startswith("erased:")]
    if events:
        conn.execute(event_t.update().where(event_t.c.id == bindparam("pk"))
                     .values(properties=bindparam("kept"), event_id=bindparam("hashed_id")),
                     [{"pk": e.id, "kept": kept, "hashed_id": e.event_id if str(e.event_id).startswith("erased:")
                       else _hashed_id(e.event_id)} for e, kept in events])
    removed["events"] += len(events)

    # lead sources: a click id names one click of this person at an ad platform
    removed["touches"] += conn.execute(touch_t.delete().where(touch_t.c.contact_id == cid)).rowcount
    # identifiers: external and anonymous ids, e-mails and phones it was known by
    removed["identities"] += conn.execute(identity_t.delete().where(identity_t.c.contact_id == cid)).rowcount

    # CRM deals: amounts and stages stay (pipeline and revenue still add up), the address goes —
    # also on a deal that waits for this address as its contact
    removed["deals"] += _deal_addresses(conn, [n for n in needles if "@" in n], deal_t.c.contact_id == cid)

    # journeys: an erased contact leaves every journey now
    removed["enrollments_exited"] += conn.execute(enrollment_t.update().where(
        enrollment_t.c.contact_id == cid, enrollment_t.c.status == "active")
        .values(status="exited", exit_reason=ERASED_REASON, left_at=now, step_id=None, next_due_at=None)).rowcount

    # scores and handovers: the score goes; a handover still pending is never delivered
    removed["handovers"] += conn.execute(handover_t.update().where(
        handover_t.c.contact_id == cid, handover_t.c.score != 0.0).values(score=0.0)).rowcount
    conn.execute(handover_t.update().where(handover_t.c.contact_id == cid, handover_t.c.status == "pending")
                 .values(status="failed", reason=ERASED_REASON))
    removed["texts_scrubbed"] += _scrub_column(conn, handover_t, handover_t.c.reason,
                                               handover_t.c.contact_id == cid, needles)
    removed["texts_scrubbed"] += _scrub_sync_runs(conn, needles)

    # the contact row: its id stays, the person goes
    row = conn.execute(select(contact_t).where(contact_t.c.id == cid)).first()
    if row is not None and (any(getattr(row, c) is not None for c in PERSONAL_COLUMNS) or row.attributes
                            or row.score):
        conn.execute(contact_t.update().where(contact_t.c.id == cid).values(
            **{c: None for c in PERSONAL_COLUMNS}, attributes={}, score=0.0, updated_at=now))
        removed["contact"] += 1


def _waiting_deals(conn: Any, subject: _Subject, *, now: datetime, actor: str, reason: str) -> None:
    """An address no contact has, held by CRM deals that wait for it as their contact: the
    address leaves them (amounts and stages stay), and is blocked from re-creating the person
    as erasing a contact would — something was held, so it is `erased`, not `not_found`."""
    held = _deal_addresses(conn, [subject.email])
    if not held:
        return
    subject.removed["deals"] += held
    subject.result.outcome = ERASED
    subject.result.erased_at = now
    suppress(conn, reason=ERASED_REASON, at=now, contact_id=None, address=subject.hashed, channel=None)
    subject.result.erasure_id = conn.execute(erasure_t.insert().values(
        contact_id=None, subject_hash=subject.hashed, actor=actor, reason=reason, outcome=IN_PROGRESS,
        removed=_counts(subject.removed), pending=[], requested_at=now, completed_at=None)).inserted_primary_key[0]


def _deal_addresses(conn: Any, addresses: list[str], theirs: Any = None) -> int:
    """`addresses` leave the CRM deals — a deal's own address (`deal.email`, cleared on the deals
    `theirs` matches too) and every address a deal waiting for its contact names (`deal_address`);
    amounts and stages stay. The number of deals that held one."""
    lower = [a.lower() for a in addresses]
    own = or_(theirs if theirs is not None else false(), func.lower(deal_t.c.email).in_(lower) if lower else false())
    held = set(conn.execute(select(deal_t.c.crm, deal_t.c.deal_id).where(own, deal_t.c.email.is_not(None))).all())
    conn.execute(deal_t.update().where(own, deal_t.c.email.is_not(None)).values(email=None))
    if lower:
        named = func.lower(deal_address_t.c.email).in_(lower)
        held |= set(conn.execute(select(deal_address_t.c.crm, deal_address_t.c.deal_id).where(named)).all())
        conn.execute(deal_address_t.delete().where(named))
    return len(held)


def _collect_files(conn: Any, subject: _Subject, now: datetime) -> None:
    rows = conn.execute(select(message_t.c.id, message_t.c.journey, message_t.c.channel, message_t.c.status,
                               message_t.c.claimed_at).where(message_t.c.contact_id == subject.contact_id)).all()
    subject.email_messages = [(r.id, r.journey) for r in rows if r.channel == "email"]
    subject.sms_messages = [r.id for r in rows if r.channel == "sms"]
    subject.whatsapp_messages = [r.id for r in rows if r.channel == "whatsapp"]
    # a channel has them now: claimed lately — one claimed longer ago is a crashed run's, which
    # reconcile settles (STUCK_AFTER), not a tick to wait for
    subject.at_channel = [r.id for r in rows if r.status == SENDING and r.claimed_at is not None
                          and aware(r.claimed_at) > now - STUCK_AFTER]
    subject.handovers = list(conn.execute(select(handover_t.c.id).where(
        handover_t.c.contact_id == subject.contact_id)).scalars())


def _pending_crms(conn: Any, subject: _Subject) -> None:
    """For an already erased person: the CRMs the last erasure could not reach."""
    last = conn.execute(select(erasure_t.c.pending).where(erasure_t.c.contact_id == subject.contact_id)
                        .order_by(erasure_t.c.id.desc()).limit(1)).scalar()
    for entry in last or []:
        if isinstance(entry, str) and entry.startswith("crm:"):
            subject.retry_crm.add(entry[4:].split(":", 1)[0])


def _interrupted(conn: Any, subject: _Subject) -> list[int]:
    """For an already erased person: their erasures still `in_progress` — the store part
    committed, the downstream part was interrupted (a crash). This request does that part
    whole, as the first one would have, and completes them (`_record`)."""
    theirs = [erasure_t.c.contact_id == subject.contact_id] if subject.contact_id is not None else []
    if subject.hashed:  # (an address only CRM deals held has no contact: `_waiting_deals`)
        theirs.append(and_(erasure_t.c.contact_id.is_(None), erasure_t.c.subject_hash == subject.hashed))
    if not theirs:
        return []
    return list(conn.execute(select(erasure_t.c.id).where(erasure_t.c.outcome == IN_PROGRESS, or_(*theirs))
                             .order_by(erasure_t.c.id)).scalars())


def _hashed_id(event_id: str) -> str:
    return "erased:" + hashlib.sha256(str(event_id).encode("utf-8")).hexdigest()[:40]


def _scrub(text: str, needles: Sequence[str]) -> str:
    for needle in needles:
        text = re.sub(re.escape(needle), SCRUBBED, text, flags=re.IGNORECASE)
    return text


def _pseudonymize_messages(conn: Any, where: Any, needles: Sequence[str]) -> tuple[int, int]:
    """The message log's rows `where` without the person: address and subject removed, a reason
    text quoting an address or number scrubbed. (rows changed, texts scrubbed)."""
    changed = conn.execute(message_t.update().where(
        where, or_(message_t.c.address.is_not(None), message_t.c.subject.is_not(None)))
        .values(address=None, subject=None)).rowcount
    return changed, _scrub_column(conn, message_t, message_t.c.reason, where, needles)


def _scrub_column(conn: Any, table: Any, column: Any, where: Any, needles: Sequence[str]) -> int:
    """Replace the person's address/phone in free text (provider replies quote addresses)."""
    if not needles:
        return 0
    found = or_(*[func.lower(column).contains(n.lower(), autoescape=True) for n in needles])
    rows = conn.execute(select(table.c.id, column).where(where, column.is_not(None), found)).all()
    for pk, text in rows:
        conn.execute(table.update().where(table.c.id == pk).values({column.name: _scrub(text, needles)}))
    return len(rows)


def _scrub_sync_runs(conn: Any, needles: Sequence[str]) -> int:
    if not needles:
        return 0
    text = func.lower(cast(sync_run_t.c.errors, String))
    rows = conn.execute(select(sync_run_t.c.id, sync_run_t.c.errors).where(
        or_(*[text.contains(n.lower(), autoescape=True) for n in needles]))).all()
    for pk, errors in rows:
        clean = [{**e, "reason": _scrub(str(e.get("reason", "")), needles)} if isinstance(e, dict) else e
                 for e in errors or []]
        conn.execute(sync_run_t.update().where(sync_run_t.c.id == pk).values(errors=clean))
    return len(rows)


def _hash_suppressions(conn: Any, cid: int, email: Optional[str], phone: Optional[str]) -> int:
    """Suppression addresses of the person replaced by their SHA-256: the contact's own rows,
    rows of its e-mail, and rows of its phone unless another contact has that number."""
    mine = [suppression_t.c.contact_id == cid]
    if email:
        mine.append(and_(suppression_t.c.contact_id.is_(None), suppression_t.c.address == email))
    if phone:
        shared = conn.execute(select(contact_t.c.id).where(contact_t.c.phone == phone, contact_t.c.id != cid)
                              .limit(1)).first()
        if shared is None:
            mine.append(and_(suppression_t.c.contact_id.is_(None), suppression_t.c.address == phone))
    rows = conn.execute(select(suppression_t.c.id, suppression_t.c.address).where(
        or_(*mine), suppression_t.c.reason != ERASED_REASON, suppression_t.c.address.is_not(None))).all()
    for pk, address in rows:
        conn.execute(suppression_t.update().where(suppression_t.c.id == pk).values(
            address=hashlib.sha256(address.encode("utf-8")).hexdigest()))
    return len(rows)


def _leave_audiences(store: Store, project: ProjectSpec, subjects: list[_Subject], context: IntegrationContext,
                     make: Factory, gone_from: set[str], secrets: Sequence[str]) -> None:
    """Every acknowledged membership of these contacts, removed now through the sync's removal
    path: one request per target (in the destination's batches), not one per person."""
    by_contact = {s.contact_id: s for s in subjects}
    if not by_contact:
        return
    with store.reading() as conn:
        rows = conn.execute(select(membership_t.c.segment, membership_t.c.target, membership_t.c.contact_id,
                                   membership_t.c.payload)
                            .where(membership_t.c.contact_id.in_(list(by_contact)))
                            .order_by(membership_t.c.target, membership_t.c.segment, membership_t.c.contact_id)).all()
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        groups.setdefault((row.segment, row.target), []).append(row)
    destinations: dict[str, Any] = {}
    try:
        for (segment, key), members in groups.items():
            name = key.partition(":")[0]
            if name in gone_from:
                forget_members(store, segment, key, [m.contact_id for m in members])
                for m in members:
                    by_contact[m.contact_id].removed["audience_memberships"] += 1
                    by_contact[m.contact_id].result.destinations[key] = "gone"
                continue
            try:
                ref = resolve_target(project, segment, key)
                if ref.destination not in destinations:
                    try:
                        destinations[ref.destination] = make(ref.destination, context)
                    except IntegrationError as exc:
                        destinations[ref.destination] = exc
                    except Exception as exc:  # a bug in a plug-in: pending, like a provider failure
                        destinations[ref.destination] = IntegrationError(f"{type(exc).__name__}: {exc}")
                destination = destinations[ref.destination]
                if isinstance(destination, Exception):
                    raise destination
            except IntegrationError as exc:
                for m in members:
                    by_contact[m.contact_id].pending.append(f"{key}: {redact(str(exc), secrets)}"[:300])
                    by_contact[m.contact_id].result.destinations[key] = "pending"
                continue
            report, ok = remove_members(store, ref, destination,
                                        [SyncMember(m.contact_id, payload=dict(m.payload or {})) for m in members],
                                        secrets=secrets)
            why = report.errors[0]["reason"] if report.errors else "failed"
            for m in members:
                subject = by_contact[m.contact_id]
                if m.contact_id in ok:
                    subject.removed["audience_memberships"] += 1
                    subject.result.destinations[key] = "removed"
                else:
                    subject.pending.append(f"{key}: {why}"[:300])
                    subject.result.destinations[key] = "pending"
    finally:
        for destination in destinations.values():
            if not isinstance(destination, Exception):
                destination.close()


def _crm_delete(project: ProjectSpec, subjects: list[_Subject], context: IntegrationContext, make: Factory,
                gone_from: set[str], secrets: Sequence[str]) -> None:
    """Ask every configured CRM with a GDPR delete to delete the people erased now or whose
    erasure was interrupted (and, for people erased before, the CRMs that could not be reached
    then)."""
    wanted = [s for s in subjects if s.email and (s.owes_everything or s.retry_crm)]
    if not wanted:
        return
    for name, crm, problem in crm_erasers(project, context, make, gone_from):
        targets = [s for s in wanted if s.owes_everything or name in s.retry_crm]
        if crm is None:
            for subject in targets:
                subject.pending.append(f"crm:{name}: {redact(problem, secrets)}"[:300])
                subject.result.destinations[f"crm:{name}"] = "pending"
            continue
        try:
            for subject in targets:
                try:
                    answer: PersonErasure = crm.erase_person(subject.email)
                except Exception as exc:  # a bug in a plug-in: recorded, retried by the next erase
                    answer = PersonErasure("failed", f"{type(exc).__name__}: {exc}")
                subject.result.destinations[f"crm:{name}"] = answer.status if answer.done else "pending"
                if answer.done:
                    if answer.status == "deleted":
                        subject.removed["crm_records"] += 1
                else:
                    subject.pending.append(f"crm:{name}: {redact(answer.reason or 'failed', secrets)}"[:300])
        finally:
            crm.close()


def _counts(removed: Counter) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(removed.items()) if v}


def _record(conn: Any, subject: _Subject, *, now: datetime, actor: str, reason: str) -> None:
    """Complete (or write) the `erasure` row of one request, and the result the caller sees; an
    interrupted erasure of the person this request finished is completed too: `erased`, its
    counts plus what this request removed, and what is still pending."""
    result = subject.result
    result.removed = _counts(subject.removed)
    result.pending = list(subject.pending)
    interrupted = (conn.execute(select(erasure_t.c.id, erasure_t.c.removed).where(
        erasure_t.c.id.in_(subject.interrupted), erasure_t.c.outcome == IN_PROGRESS)).all()
        if subject.interrupted else [])
    for pk, removed in interrupted:
        conn.execute(erasure_t.update().where(erasure_t.c.id == pk).values(
            outcome=ERASED, removed=_counts(Counter(removed or {}) + subject.removed), pending=result.pending,
            completed_at=datetime.now(timezone.utc)))
    if result.outcome == ERASED:
        conn.execute(erasure_t.update().where(erasure_t.c.id == result.erasure_id).values(
            outcome=ERASED, removed=result.removed, pending=result.pending, completed_at=datetime.now(timezone.utc)))
        return
    known = result.outcome == ALREADY_ERASED
    result.erasure_id = conn.execute(erasure_t.insert().values(
        contact_id=subject.contact_id if known else None, subject_hash=subject.hashed if known else None,
        actor=actor, reason=reason, outcome=result.outcome, removed=result.removed, pending=result.pending,
        requested_at=now, completed_at=datetime.now(timezone.utc))).inserted_primary_key[0]


def erased_tombstones(conn: Any, contact_id: int) -> list[Any]:
    """The consent ledger's tombstone rows of a contact (for tests and the export)."""
    return conn.execute(select(consent_t).where(consent_t.c.contact_id == contact_id,
                                                consent_t.c.status == ERASED_REASON)).all()
