"""Provider webhooks: Twilio (inbound SMS and WhatsApp messages — STOP/START keywords, the
WhatsApp session an inbound message opens — and message status callbacks, authenticated by
`X-Twilio-Signature`) and a generic JSON bounce/complaint webhook.

Twilio's signature (documented under "Webhooks security"): take the full URL Twilio
requested (scheme, host, path and query), append every POST parameter sorted by name as
name followed by value (repeated names: each distinct value, sorted), HMAC-SHA1 the result
with the account's auth token and base64 it. Nurture rebuilds the URL from NURTURE_PUBLIC_URL,
because behind a proxy the URL the server sees is not the one Twilio signed.

Bounce webhook format (POST /webhooks/bounces, `Authorization: Bearer <token>`): a JSON
object or a list of objects, or `{"events": [...]}`, each
`{"type": "bounce" | "complaint", "email": "...", "bounce_type": "hard" | "soft",
"message_id": "<...>", "timestamp": "ISO 8601"}` — `bounce_type` defaults to hard.
Hard bounces suppress the address (`hard_bounce`), complaints suppress it (`complaint`) and
revoke e-mail marketing consent; soft bounces are counted and ignored (the SMTP channel
already retries 4xx answers). The answer counts what was stored: `applied` by reason, and
`duplicates` by reason (only when there are any) for events already on record — a provider
replaying a webhook stores nothing twice and is told so. A bad event (unknown type, bad
address, unreadable or out-of-range timestamp) is listed in `errors` as
`events[i].field: message`; the good events next to it are applied.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional, Sequence

from sqlalchemy import delete, select

from nurture.consent_ledger import current_state, history, is_suppressed, record_consent, suppress
from nurture.double_opt_in import confirm_pending
from nurture.ingest import normalize_email, parse_timestamp, write_events
from nurture.send.guards.whatsapp import WHATSAPP_RECEIVED
from nurture.store.models import FAILED, SENT
from nurture.store.tables import contact_t, message_t, suppression_t
from nurture.tokens import same_secret


# Twilio's default opt-out / opt-in keywords (Advanced Opt-Out defaults), matched on the
# whole message body, case-insensitively.
STOP_KEYWORDS = {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
START_KEYWORDS = {"START", "YES", "UNSTOP"}
# Status-callback error codes that mean the number will never take an SMS.
UNREACHABLE_CODES = {"30005", "30006", "21211", "21614", "63003", "63024"}
STOPPED_CODES = {"21610"}


def twilio_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    values: dict[str, set[str]] = {}
    for name, value in pairs:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode("utf-8"), hashlib.sha1).digest()).decode()


def twilio_signature_valid(auth_token: str, url: str, params: Sequence[tuple[str, str]], signature: Optional[str]) -> bool:
    if not signature:
        return False
    return same_secret(signature, twilio_signature(auth_token, url, params))


def _contacts_by_phone(conn: Any, phone: str) -> list[int]:
    return [r[0] for r in conn.execute(select(contact_t.c.id).where(contact_t.c.phone == phone))]


def _stop_purposes(channel: str) -> tuple[str, ...]:
    # WhatsApp's opt-in covers every purpose: so does its opt-out (and a START after it).
    return ("marketing", "transactional") if channel == "whatsapp" else ("marketing",)


def _stop_revoked_a_grant(conn: Any, contact_id: int, channel: str, purpose: str) -> bool:
    """Whether the current state is a STOP's revocation (one or several STOPs in a row) and the
    row before it a grant: what a START gives back. Anything else — no consent ever, a grant
    still current, a revocation from the preference center or an operator — it leaves alone."""
    stopped = False
    for entry in history(conn, contact_id, channel, purpose):
        if entry.status == "revoked" and entry.source in _STOP_SOURCES:
            stopped = True
            continue
        return stopped and entry.status == "granted"
    return False


_STOP_SOURCES = {f"twilio:{keyword}" for keyword in STOP_KEYWORDS}


def twilio_inbound(conn: Any, params: Mapping[str, str], *, now: datetime, policy_version: str,
                   pending_expires: Optional[timedelta] = None) -> str:
    """An inbound SMS or WhatsApp message (`From: whatsapp:+…`). Returns `stop`, `start`,
    `received` (WhatsApp: the contact's 24-hour session opened, nurture.send.guards.whatsapp)
    or `ignored`. STOP / START act on the channel the message came in on: STOP revokes marketing
    (WhatsApp: both purposes) and suppresses the number; START lifts that suppression, gives
    back each purpose a STOP revoked from a grant, and confirms each purpose whose consent is
    `pending` (double opt-in, e.g. from a lead form; `pending_expires`: the policies'
    `pending_consent_expires`, None: no limit) — nothing else."""
    keyword = " ".join((params.get("Body") or "").split()).upper()
    sender = (params.get("From") or "").strip()
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    phone = sender.removeprefix("whatsapp:")
    if not phone:
        return "ignored"
    stop_reason = f"{channel}_stop"
    contacts = _contacts_by_phone(conn, phone)
    outcome = "ignored"
    if keyword in STOP_KEYWORDS:
        for cid in contacts:
            for purpose in _stop_purposes(channel):
                record_consent(conn, cid, channel, "revoked", purpose=purpose, source=f"twilio:{keyword}",
                               at=now, policy_version=policy_version)
        if not is_suppressed(conn, address=phone, reason=stop_reason):
            suppress(conn, reason=stop_reason, at=now, contact_id=contacts[0] if len(contacts) == 1 else None,
                     address=phone, channel=channel)
        outcome = "stop"
    elif keyword in START_KEYWORDS:
        # START restores what a STOP revoked, or confirms an opt-in the person asked for (pending
        # under double opt-in: the text proves the number is theirs), and never creates consent
        # (a "YES" answering a transactional text is no marketing opt-in).
        for cid in contacts:
            for purpose in _stop_purposes(channel):
                if _stop_revoked_a_grant(conn, cid, channel, purpose):
                    # Sent from the phone itself: as confirmed as an opt-in gets.
                    record_consent(conn, cid, channel, "granted", purpose=purpose, source=f"twilio:{keyword}",
                                   at=now, policy_version=policy_version, confirmed=True)
                else:
                    confirm_pending(conn, cid, channel, purpose, now=now, expires=pending_expires,
                                    source=f"twilio:{keyword}", policy_version=policy_version)
        conn.execute(delete(suppression_t).where(suppression_t.c.address == phone,
                                                 suppression_t.c.reason == stop_reason))
        outcome = "start"
    if channel == "whatsapp" and contacts:
        # Any inbound WhatsApp message opens the 24-hour session (free text may answer it). The
        # event carries no message text: only that the contact wrote, and when.
        sid = (params.get("MessageSid") or params.get("SmsSid") or "").strip()
        write_events(conn, [{"event_id": f"twilio:{sid}:{cid}" if sid else f"twilio:{phone}:{now.isoformat()}:{cid}",
                             "email": None, "contact_id": cid, "name": WHATSAPP_RECEIVED,
                             "properties": {"channel": "whatsapp"}, "occurred_at": now, "line": 0}
                            for cid in contacts], source="twilio", now=now, create_contacts=False)
        return "received" if outcome == "ignored" else outcome
    return outcome


def twilio_status(conn: Any, params: Mapping[str, str], *, now: datetime) -> str:
    """A status callback for a message we sent (matched by MessageSid = provider id)."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    row = conn.execute(select(message_t.c.id, message_t.c.contact_id, message_t.c.address, message_t.c.channel)
                       .where(message_t.c.provider_id == sid, message_t.c.channel.in_(("sms", "whatsapp")))
                       ).first() if sid else None
    if row is None:
        return "unknown_message"
    if status in ("failed", "undelivered"):
        code = (params.get("ErrorCode") or "").strip()
        conn.execute(message_t.update().where(message_t.c.id == row.id)
                     .values(status=FAILED, reason=f"twilio_{status}" + (f": {code}" if code else "")))
        if code in STOPPED_CODES:
            suppress(conn, reason=f"{row.channel}_stop", at=now, contact_id=row.contact_id, address=row.address,
                     channel=row.channel)
        elif code in UNREACHABLE_CODES:
            suppress(conn, reason="hard_bounce", at=now, contact_id=row.contact_id, address=row.address,
                     channel=row.channel)
        return status
    if status in ("delivered", "read"):  # WhatsApp reports `read` after `delivered`
        conn.execute(message_t.update().where(message_t.c.id == row.id, message_t.c.status == SENT)
                     .values(reason=status))
    return status or "no_status"


def bounce_events(payload: Any) -> tuple[list[dict], list[str]]:
    """Validate the generic bounce payload: (clean events, errors by position)."""
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        items = payload["events"]
    elif isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict):
        items = [payload]
    else:
        return [], ["body must be a JSON object, a list of objects, or {\"events\": [...]}"]
    clean, errors = [], []
    for i, item in enumerate(items):
        where = f"events[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: must be an object")
            continue
        kind = str(item.get("type", "")).lower()
        if kind not in ("bounce", "complaint"):
            errors.append(f"{where}.type: must be 'bounce' or 'complaint'")
            continue
        try:
            email = normalize_email(str(item.get("email") or ""))
        except ValueError as exc:
            errors.append(f"{where}.email: {exc}")
            continue
        bounce_type = str(item.get("bounce_type") or "hard").lower()
        if kind == "bounce" and bounce_type not in ("hard", "soft"):
            errors.append(f"{where}.bounce_type: must be 'hard' or 'soft'")
            continue
        at = None
        if item.get("timestamp") not in (None, ""):
            try:
                at = parse_timestamp(item["timestamp"])
            except ValueError as exc:
                errors.append(f"{where}.timestamp: {exc}")
                continue
        clean.append({"type": kind, "email": email, "bounce_type": bounce_type, "at": at})
    return clean, errors


@dataclass
class BounceOutcome:
    """What a bounce webhook changed: `applied` counts events that stored something (or soft
    bounces, counted and ignored), `duplicates` those already on record."""
    applied: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)


def apply_bounces(conn: Any, events: Iterable[dict], *, now: datetime, policy_version: str) -> BounceOutcome:
    outcome = BounceOutcome()
    for event in events:
        if event["type"] == "bounce" and event["bounce_type"] == "soft":
            outcome.applied["soft_bounce_ignored"] += 1
            continue
        reason = "hard_bounce" if event["type"] == "bounce" else "complaint"
        stored = _apply_bounce(conn, event, reason, now=now, policy_version=policy_version)
        (outcome.applied if stored else outcome.duplicates)[reason] += 1
    return outcome


def _apply_bounce(conn: Any, event: dict, reason: str, *, now: datetime, policy_version: str) -> bool:
    """Suppress the address (once) and, for a complaint, revoke e-mail marketing consent unless
    it already is revoked. True when anything was written: a replay is not counted as applied."""
    at = event["at"] or now
    cid = conn.execute(select(contact_t.c.id).where(contact_t.c.email == event["email"])).scalar()
    stored = False
    if not is_suppressed(conn, address=event["email"], reason=reason):
        suppress(conn, reason=reason, at=at, contact_id=cid, address=event["email"], channel="email")
        stored = True
    if reason == "complaint" and cid is not None:
        state = current_state(conn, cid, "email", "marketing")
        if stored or state is None or state.status != "revoked":
            record_consent(conn, cid, "email", "revoked", purpose="marketing", source="webhook:complaint",
                           at=at, policy_version=policy_version)
            stored = True
    return stored
