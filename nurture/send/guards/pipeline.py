"""The guard pipeline: checks 1–5 of the send promise for a batch, in order — consent →
suppression (and topic opt-outs) → reachability → sunset → quiet hours → frequency cap — each reading
the database at the moment of the check, never a value cached from enrollment time.

One function decides the first send of a step (the send transaction, nurture.send.outbox) and
every later delivery attempt (the claim in nurture.send.deliver), so a retry meets exactly the
checks, outcomes and reasons a first send does. The caller runs it inside the transaction that records the
outcome, after `lock_contacts`: on PostgreSQL the contact rows are locked in id order (two
workers cannot deadlock, and cannot both pass a cap); on SQLite the write transaction
(`BEGIN IMMEDIATE`) is already exclusive.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from sqlalchemy import bindparam, func, select

from nurture.consent_ledger import current_consent
from nurture.runtime.sql import chunks, ids_in
from nurture.send.guards.consent import consent_refusal
from nurture.send.guards.frequency_cap import Cap, cap_blocks_until
from nurture.send.guards.quiet_hours import QuietWindow, next_allowed_send, zone
from nurture.send.guards.reachability import unreachable_reason
from nurture.send.guards.sunset import SunsetRule, sunset_contacts
from nurture.send.guards.whatsapp import EXPLICIT_OPT_IN, whatsapp_sessions
from nurture.send.guards.suppression import suppression_reason, suppressions_for
from nurture.store.models import DEFERRED, HOLDOUT, QUEUED, SENDING, SENT, SKIPPED, SUPPRESSED, MessageStatus
from nurture.store.tables import contact_t, message_t

# Statuses that count against frequency caps: what is on its way or went out.
COUNTING: tuple[MessageStatus, ...] = (QUEUED, SENDING, SENT)
# Contact attribute listing the topics (journey `topic:`) a contact opted out of in the
# preference center; marketing sends of those journeys are suppressed.
TOPICS_OPTED_OUT = "topics_opted_out"


@dataclass(frozen=True)
class SendRules:
    """What the checks of one send step depend on besides the recipient."""
    channel: str
    purpose: str
    caps: tuple[Cap, ...] = ()
    window: Optional[QuietWindow] = None  # marketing; of transactional, only a text asking for consent
    on_cap: str = "defer"  # defer | skip
    double_opt_in: bool = False
    default_timezone: str = "UTC"
    topic: Optional[str] = None
    sunset: Optional[SunsetRule] = None  # marketing only, unless the journey has `reach_sunset`
    # WhatsApp: the step has an approved template (content_sid) to send outside the 24-hour
    # session window; without one, only contacts inside an open session can be messaged.
    whatsapp_template: bool = False

    @property
    def marketing(self) -> bool:
        return self.purpose == "marketing"


class Recipient(NamedTuple):
    contact_id: int
    email: Optional[str]
    phone: Optional[str]
    timezone: Optional[str]
    attributes: Optional[dict]
    holdout: bool = False


class Verdict(NamedTuple):
    status: MessageStatus  # queued | holdout | suppressed | skipped | deferred
    reason: Optional[str]
    due: Optional[datetime] = None  # deferred: when the message may go


def address_of(channel: str, email: Optional[str], phone: Optional[str]) -> Optional[str]:
    return email if channel == "email" else phone


def lock_contacts(conn: Any, contact_ids: Iterable[int]) -> None:
    """Serialize sends per contact (PostgreSQL row locks, in id order). `FOR NO KEY UPDATE`:
    another send, an update of the contact (an `update` step, an import) or its erasure waits
    for the send transaction; a row that merely refers to the contact — an event tracked, a
    consent recorded, an enrollment — does not (its foreign-key check takes `FOR KEY SHARE`,
    which `FOR UPDATE` blocked: a webhook's event for a contact in a large send waited for
    that batch's commit)."""
    if conn.dialect.name != "postgresql":
        return
    for part in chunks(sorted(set(contact_ids))):
        locking = (select(contact_t.c.id).where(ids_in(contact_t.c.id, part)).order_by(contact_t.c.id)
                   .with_for_update(key_share=True).subquery())
        conn.execute(select(func.count()).select_from(locking)).scalar()  # the rows locked, not sent back


# The status is checked here, not in SQL: offered `status IN (…)`, PostgreSQL's planner can
# take the queue index (status, due_at) — every counted message of every contact — instead of
# ix_message_cap; it did so during a large first send, whose table statistics still said
# "empty", reading all of a tick's messages again for every batch.
_COUNTED = (select(message_t.c.id, message_t.c.contact_id, message_t.c.channel, message_t.c.counted_at,
                   message_t.c.status)
            .where(ids_in(message_t.c.contact_id, ()), message_t.c.counted_at > bindparam("since"),
                   message_t.c.purpose == "marketing"))


def cap_history(conn: Any, contact_ids: list[int], since: datetime,
                exclude: frozenset[int] = frozenset()) -> dict[int, list[tuple[str, datetime]]]:
    """contact id → (channel, counted_at) of the marketing messages counting against caps
    since `since`, without the messages in `exclude` (the ones being re-checked)."""
    history: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    for part in chunks(sorted(set(contact_ids))):
        for mid, contact_id, channel, counted_at, status in conn.execute(_COUNTED, {"ids_contact_id": list(part),
                                                                                    "since": since}).all():
            if status in COUNTING and mid not in exclude:
                history[contact_id].append((channel, counted_at))
    return history


def check_batch(conn: Any, rules: SendRules, recipients: Sequence[Recipient], now: datetime,
                exclude_messages: frozenset[int] = frozenset(),
                pending: Optional[dict[int, list[tuple[str, datetime]]]] = None) -> list[Verdict]:
    """One verdict per recipient, in order. Recipients are decided in sequence: one that
    passes counts against the caps of the ones after it (the same contact twice in a batch
    cannot slip past a cap). `pending`: messages this transaction already queued on another
    channel (channel fallback), counted against the caps too — and added to."""
    channel, purpose, marketing = rules.channel, rules.purpose, rules.marketing
    contact_ids = [r.contact_id for r in recipients]
    consents = current_consent(conn, contact_ids, channel, purpose, now)
    addresses = [address_of(channel, r.email, r.phone) or "" for r in recipients]
    by_contact, by_address = suppressions_for(conn, contact_ids, addresses)
    sunset = sunset_contacts(conn, contact_ids, rules.sunset, now) if rules.sunset is not None and marketing else set()
    caps = rules.caps if marketing else ()
    longest = max((c.per for c in caps), default=None)
    history = cap_history(conn, contact_ids, now - longest, exclude_messages) if longest else {}
    if pending:
        for contact_id in set(contact_ids) & pending.keys():
            history.setdefault(contact_id, []).extend(pending[contact_id])
    sessions = (whatsapp_sessions(conn, contact_ids, now)
                if channel == "whatsapp" and not rules.whatsapp_template else None)
    window = rules.window  # (None for a transactional message, except a text asking for consent)
    allowed_by_zone: dict[Optional[str], datetime] = {}
    verdicts: list[Verdict] = []
    for r, address in zip(recipients, addresses):
        verdict = _screen(rules, r, address, consents, by_contact, by_address)
        if verdict is None and sessions is not None and r.contact_id not in sessions:
            verdict = Verdict(SKIPPED, "whatsapp_session_closed")  # free text needs an open session
        if verdict is None and r.contact_id in sunset:
            verdict = Verdict(SUPPRESSED, "sunset")
        if verdict is None and window is not None:
            allowed = allowed_by_zone.get(r.timezone)
            if allowed is None:  # the same for everyone in a time zone: once per zone and batch
                allowed = allowed_by_zone[r.timezone] = next_allowed_send(
                    now, zone(r.timezone, rules.default_timezone), window)
            if allowed > now:
                verdict = Verdict(DEFERRED, "quiet_hours", allowed)
        if verdict is None and caps:
            blocked = cap_blocks_until(history.get(r.contact_id, ()), channel, now, caps)
            if blocked is not None:
                verdict = (Verdict(SKIPPED, "frequency_cap") if rules.on_cap == "skip"
                           else Verdict(DEFERRED, "frequency_cap", blocked))
        if verdict is None:
            if marketing:
                history.setdefault(r.contact_id, []).append((channel, now))
                if pending is not None:
                    pending.setdefault(r.contact_id, []).append((channel, now))
            verdict = Verdict(QUEUED, None)
        verdicts.append(verdict)
    return verdicts


def _screen(rules: SendRules, r: Recipient, address: str, consents: dict, by_contact: dict,
            by_address: dict) -> Optional[Verdict]:
    """Checks 1–3 (holdout, consent, suppression, topic, reachability): a refusal or None."""
    if r.holdout:
        return Verdict(HOLDOUT, "holdout")
    refusal = consent_refusal(consents.get(r.contact_id), rules.purpose, rules.double_opt_in,
                              explicit=rules.channel in EXPLICIT_OPT_IN)
    if refusal:
        return Verdict(SUPPRESSED, refusal)
    entries = by_contact.get(r.contact_id, []) + by_address.get(address.lower(), [])
    reason = suppression_reason(entries, rules.channel, rules.purpose) if entries else None
    if not reason and rules.marketing and rules.topic and \
            rules.topic in ((r.attributes or {}).get(TOPICS_OPTED_OUT) or ()):
        reason = "topic_opt_out"
    if reason:
        return Verdict(SUPPRESSED, reason)
    reason = unreachable_reason(rules.channel, r.email, r.phone)
    return Verdict(SKIPPED, reason) if reason else None
