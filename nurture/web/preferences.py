"""What a recipient can change about themselves: unsubscribe (one click) and the preference
center (marketing by channel, and topics — the `topic:` of journeys).

Plain functions over a database connection, so the web pages, the webhooks and tests share
them. Every consent change is a ledger row with source, policy version and time; an e-mail
unsubscribe also writes a `suppression` row (reason `unsubscribed`, channel email). The send
pipeline re-reads both at send time, so a change takes effect before the next send.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import delete, select

from nurture.consent_ledger import Proof, current_state, record_consent, suppress
from nurture.double_opt_in import request_opt_in
from nurture.identities import erased_contacts
from nurture.send.guards.pipeline import TOPICS_OPTED_OUT
from nurture.spec.models import Policies
from nurture.spec.project import ProjectSpec
from nurture.store.tables import contact_t, suppression_t

CHANNELS = ("email", "sms", "whatsapp")  # the phone channels only for a contact with a phone


@dataclass
class Preferences:
    """The state the preference center shows (and the form posts back)."""
    contact_id: int
    email: Optional[str]
    phone: Optional[str]
    channels: dict[str, bool] = field(default_factory=dict)  # marketing wanted, per channel
    topics: dict[str, bool] = field(default_factory=dict)  # topic → still wanted
    sms_stopped: bool = False
    whatsapp_stopped: bool = False
    locale: Optional[str] = None  # the contact's own (the page's language: nurture.web.pages.page_language)


def topics_of(project: ProjectSpec) -> list[str]:
    return sorted({j.topic for j in project.journeys.values() if getattr(j, "topic", None)})


def load_preferences(conn: Any, project: ProjectSpec, contact_id: int) -> Optional[Preferences]:
    row = conn.execute(select(contact_t.c.email, contact_t.c.phone, contact_t.c.attributes, contact_t.c.locale)
                       .where(contact_t.c.id == contact_id)).first()
    if row is None or erased_contacts(conn, [contact_id]):  # an erased person's old link: no record
        return None
    email, phone, attributes, locale = row
    prefs = Preferences(contact_id, email, phone, locale=locale)
    reasons = {(ch, reason) for ch, reason in conn.execute(
        select(suppression_t.c.channel, suppression_t.c.reason).where(suppression_t.c.contact_id == contact_id))}
    for channel in CHANNELS:
        state = current_state(conn, contact_id, channel, "marketing")
        unsubscribed = (channel, "unsubscribed") in reasons or (None, "unsubscribed") in reasons
        prefs.channels[channel] = bool(state and state.status in ("granted", "pending")) and not unsubscribed
    prefs.sms_stopped = ("sms", "sms_stop") in reasons or (None, "sms_stop") in reasons
    prefs.whatsapp_stopped = ("whatsapp", "whatsapp_stop") in reasons
    opted_out = set((attributes or {}).get(TOPICS_OPTED_OUT) or ())
    prefs.topics = {topic: topic not in opted_out for topic in topics_of(project)}
    return prefs


def contact_locale(conn: Any, contact_id: int) -> Optional[str]:
    """The contact's own `locale` (None: none, or no such contact)."""
    return conn.execute(select(contact_t.c.locale).where(contact_t.c.id == contact_id)).scalar()


def unsubscribe(conn: Any, contact_id: int, channel: str, *, source: str, now: datetime, policy_version: str,
                proof: Proof = Proof()) -> bool:
    """Revoke marketing consent for the channel (+ an `unsubscribed` suppression for e-mail).
    Idempotent: returns False when the contact was already unsubscribed."""
    exists = conn.execute(select(contact_t.c.id).where(contact_t.c.id == contact_id)).scalar()
    if exists is None or erased_contacts(conn, [contact_id]):  # nothing is written about an erased person
        return False
    state = current_state(conn, contact_id, channel, "marketing")
    already_suppressed = conn.execute(select(suppression_t.c.id).where(
        suppression_t.c.contact_id == contact_id, suppression_t.c.channel == channel,
        suppression_t.c.reason == "unsubscribed").limit(1)).first() is not None
    changed = False
    if state is None or state.status != "revoked":
        record_consent(conn, contact_id, channel, "revoked", purpose="marketing", source=source, at=now,
                       policy_version=policy_version, proof=proof)
        changed = True
    if channel == "email" and not already_suppressed:
        address = conn.execute(select(contact_t.c.email).where(contact_t.c.id == contact_id)).scalar()
        suppress(conn, reason="unsubscribed", at=now, contact_id=contact_id, address=address, channel="email")
        changed = True
    return changed


def resubscribe(conn: Any, policies: Policies, contact_id: int, channel: str, *, link_channel: str, source: str,
                now: datetime, proof: Proof = Proof()) -> Optional[str]:
    """Grant marketing consent again from the preference center; what changed (None: nothing).
    The signed link proves control of the address it was sent to (`link_channel`), so consent
    on that channel is recorded as confirmed. A link that went elsewhere proves nothing about
    the channel asked for: it goes through `request_opt_in` — pending and a confirmation request
    (an e-mail; a text for SMS; none for WhatsApp, whose START confirms) where double opt-in is
    required, a grant where not. (An SMS ticked on an e-mailed link under SMS double opt-in was
    granted unconfirmed: refused by every send, for good.) An SMS STOP is only lifted by the
    START keyword from the phone itself."""
    state = current_state(conn, contact_id, channel, "marketing")
    unsubscribed = conn.execute(select(suppression_t.c.id).where(
        suppression_t.c.contact_id == contact_id, suppression_t.c.channel == channel,
        suppression_t.c.reason == "unsubscribed").limit(1)).first() is not None
    if state and state.status == "granted" and not unsubscribed:
        return None
    if channel != link_channel:
        outcome = request_opt_in(conn, policies, contact_id, channel=channel, source=source, now=now)
        if outcome == "unreachable":
            return None
        change = _ASKED.get(channel, "confirmation pending") if outcome in ("pending", "already_pending") \
            else "subscribed"
    else:
        record_consent(conn, contact_id, channel, "granted", purpose="marketing", source=source, at=now,
                       policy_version=policies.version, confirmed=True, proof=proof)
        change = "subscribed"
    conn.execute(delete(suppression_t).where(suppression_t.c.contact_id == contact_id,
                                             suppression_t.c.channel == channel,
                                             suppression_t.c.reason == "unsubscribed"))
    return change


_ASKED = {"email": "confirmation e-mail sent", "sms": "confirmation text sent"}
# changes of apply_preferences that queued a confirmation request to deliver
CONFIRMATION_SENT, TEXT_SENT = (f"{channel}: {_ASKED[channel]}" for channel in ("email", "sms"))


def apply_preferences(conn: Any, project: ProjectSpec, contact_id: int, wanted_channels: set[str],
                      wanted_topics: set[str], *, source: str, now: datetime, proof: Proof = Proof(),
                      link_channel: str = "email") -> list[str]:
    """Bring the contact to the submitted state; returns a list of what changed.
    `link_channel`: where the signed link was sent (the token's channel, see `resubscribe`)."""
    current = load_preferences(conn, project, contact_id)
    if current is None:
        return []
    version = project.policies.version
    changes: list[str] = []
    for channel in CHANNELS:
        if channel != "email" and not current.phone:
            continue
        want = channel in wanted_channels
        if want and not current.channels[channel]:
            change = resubscribe(conn, project.policies, contact_id, channel, link_channel=link_channel,
                                 source=source, now=now, proof=proof)
            if change:
                changes.append(f"{channel}: {change}")
        elif not want and current.channels[channel]:
            if unsubscribe(conn, contact_id, channel, source=source, now=now, policy_version=version, proof=proof):
                changes.append(f"{channel}: unsubscribed")
    known = set(current.topics)
    opted_out = sorted(known - wanted_topics)
    before = sorted(t for t, wanted in current.topics.items() if not wanted)
    if opted_out != before:
        attributes = dict(conn.execute(select(contact_t.c.attributes).where(contact_t.c.id == contact_id)).scalar() or {})
        # Keep opt-outs of topics no journey declares any more: they are still the contact's wish.
        kept = [t for t in (attributes.get(TOPICS_OPTED_OUT) or ()) if t not in known]
        attributes[TOPICS_OPTED_OUT] = sorted(set(kept) | set(opted_out))
        conn.execute(contact_t.update().where(contact_t.c.id == contact_id).values(attributes=attributes, updated_at=now))
        changes.extend(f"topic {t}: {'off' if t in opted_out else 'on'}" for t in sorted(set(opted_out) ^ set(before)))
    return changes
