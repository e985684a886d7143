"""The right of access and to data portability (GDPR Art. 15/20): one JSON document with
everything Nurture holds about a contact.

`export_contact(store, project, email, data_dir=…)` answers the document, or None when no
contact has the address (`erasure_of` then tells whether it was erased). The person may be
named by phone number instead (E.164, or national in `default_country`:
NURTURE_DEFAULT_COUNTRY) — a contact Nurture knows only by phone, a phone-only lead: found in
the `phone` column and among the phone identities; a number several contacts share is a
ValueError (whose data it is cannot be told: name the person by e-mail). Sections:

- `contact` — the contact row (e-mail, phone, names, time zone, country, locale, lifecycle
  stage, score, attributes, timestamps);
- `identifiers` — every identifier the person is known by: e-mail, phone, the record ids CRMs
  gave them, and the hashed identifiers each audience received;
- `consents` — the ledger, every row (channel, purpose, status, source, policy version,
  recorded/confirmed), and `consent_state`, the latest row per (channel, purpose);
- `touches` — the lead sources: the `first` and the `last` marketing touch (UTM parameters,
  click id and its type, the event it came from, when);
- `suppressions`, `events` (with properties), `enrollments`, `messages` (the log: channel,
  template, subject, address, status and reason, times) with the outbox files that hold the
  rendered messages, `scores` (score, lifecycle stage), `handovers`;
- `segments` — the segments the contact is in now (each segment's condition evaluated for it),
  and `audiences` — what each destination acknowledged (segment, target, when, what was sent),
  with the latest `sync_run` of each of those targets.

Times are ISO 8601 UTC strings, so the document goes through `json.dumps` as it is. Nothing
here writes to the store.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import func, select

from nurture.conditions import ConditionScope, compile_condition
from nurture.contact_lookup import contact_by_email
from nurture.identities import phone_holders
from nurture.ingest import normalize_email, normalize_phone
from nurture.privacy.files import eml_paths
from nurture.privacy.models import erasure_t
from nurture.privacy.tombstones import erased_suppression, subject_hash
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import (consent_t, contact_t, enrollment_t, event_t, handover_t, identity_t, membership_t,
                                  message_t, suppression_t, sync_run_t, touch_t)

FORMAT = "nurture.contact-export/1"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_jsonb(value: Any) -> Any:
    """Attributes as PostgreSQL's JSONB gives them back, on SQLite too, so that one contact
    exports the same document from both: keys sorted (Python's order, for both: JSONB's own is
    shortest first), and a whole number written with an exponent (`1e+20`, a float here) as
    the integer it denotes (JSONB keeps numbers as `numeric`, which reads back as digits)."""
    if isinstance(value, dict):
        return {k: _as_jsonb(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_as_jsonb(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and "e" in repr(value):
        return int(Decimal(repr(value)))  # the written digits (1e+300 is 10**300, not the double's value)
    return value


def _rows(conn: Any, table: Any, *where: Any, order: Any = None, drop: tuple[str, ...] = ()) -> list[dict]:
    order = order if order is not None else table.c.id
    stmt = select(table).where(*where).order_by(*(order if isinstance(order, tuple) else (order,)))
    return [{k: _plain(v) for k, v in row._mapping.items() if k not in drop} for row in conn.execute(stmt)]


def _as_phone(given: str, default_country: Optional[str]) -> Optional[str]:
    """The E.164 number of something that is no e-mail address, or None."""
    if "@" in given:
        return None
    try:
        return normalize_phone(given.strip(), default_country)
    except ValueError:
        return None


def find_contact(conn: Any, email: str, default_country: Optional[str] = None) -> Optional[int]:
    """The contact id of an address (normalized as the ingest stores it) — its own address, or
    a second one it is known by (contact_identity) — or of a phone number (its `phone`, or a
    phone identity), or None. ValueError: a number several contacts are known by."""
    phone = _as_phone(email, default_country)
    if phone is not None:
        holders = phone_holders(conn, phone)
        if len(holders) > 1:
            raise ValueError(f"{len(holders)} contacts are known by {phone}: name the person by e-mail address")
        return holders[0] if holders else None
    return contact_by_email(conn, email)


def erasure_of(store: Store, email: str, default_country: Optional[str] = None) -> Optional[datetime]:
    """When the address (or phone number) was erased (None: it was not)."""
    normalized = _as_phone(email, default_country)
    if normalized is None:
        try:
            normalized = normalize_email(email)
        except ValueError:
            return None
    with store.reading() as conn:
        row = erased_suppression(conn, subject_hash(normalized))
    return row.created_at if row is not None else None


def export_contact(store: Store, project: Optional[ProjectSpec], email: str, *, data_dir: Optional[Path] = None,
                   now: Optional[datetime] = None, default_country: Optional[str] = None) -> Optional[dict]:
    """Everything held about the contact with this e-mail address (or phone number), or None."""
    now = now or datetime.now(timezone.utc)
    with store.reading() as conn:
        cid = find_contact(conn, email, default_country)
        if cid is None:
            return None
        contact = _rows(conn, contact_t, contact_t.c.id == cid)[0]
        contact["attributes"] = _as_jsonb(contact["attributes"])
        consents = _rows(conn, consent_t, consent_t.c.contact_id == cid,
                         order=(consent_t.c.recorded_at, consent_t.c.id), drop=("contact_id", "subject_hash"))
        messages = _rows(conn, message_t, message_t.c.contact_id == cid, drop=("contact_id", "claim", "claimed_at"))
        memberships = _rows(conn, membership_t, membership_t.c.contact_id == cid, order=membership_t.c.id,
                            drop=("contact_id",))
        handovers = _rows(conn, handover_t, handover_t.c.contact_id == cid, drop=("contact_id",))
        doc = {
            "format": FORMAT,
            "exported_at": _plain(now),
            "contact": contact,
            "identifiers": _identifiers(contact, memberships, handovers),
            "consents": consents,
            "consent_state": _state(consents),
            # every identifier it is known by: other e-mails and phones, external and anonymous ids
            "identities": _rows(conn, identity_t, identity_t.c.contact_id == cid, drop=("contact_id",)),
            "touches": _rows(conn, touch_t, touch_t.c.contact_id == cid, order=touch_t.c.touch,  # first, last
                             drop=("contact_id",)),
            "suppressions": _suppressions(conn, contact),
            "events": _rows(conn, event_t, event_t.c.contact_id == cid, order=(event_t.c.occurred_at, event_t.c.id),
                            drop=("contact_id",)),
            "enrollments": _rows(conn, enrollment_t, enrollment_t.c.contact_id == cid, drop=("contact_id",)),
            "messages": messages,
            "scores": {"score": contact["score"], "lifecycle_stage": contact["lifecycle_stage"]},
            "handovers": handovers,
            "segments": _segments(conn, project, cid, now),
            "audiences": memberships,
            "sync_runs": _sync_runs(conn, memberships),
            "erasures": _rows(conn, erasure_t, erasure_t.c.contact_id == cid, drop=("contact_id", "subject_hash")),
        }
    if data_dir is not None:
        doc["files"] = [str(p.relative_to(data_dir)) for p in
                        eml_paths(data_dir, [(m["id"], m["journey"]) for m in messages if m["channel"] == "email"])]
    return doc


def _identifiers(contact: dict, memberships: list[dict], handovers: list[dict]) -> dict:
    crm_ids: dict[str, set[str]] = {}
    for m in memberships:
        record = (m.get("payload") or {}).get("record_id")
        if record:
            crm_ids.setdefault(m["target"].partition(":")[0], set()).add(str(record))
    for h in handovers:
        external = h.get("external_id") or ""
        if external.startswith("contact:"):
            crm_ids.setdefault(h["destination"], set()).add(external.split()[0].partition(":")[2])
    return {"email": contact["email"], "phone": contact["phone"],
            "crm_records": {k: sorted(v) for k, v in sorted(crm_ids.items())},
            "audience_identifiers": {m["target"]: m.get("payload") for m in memberships}}


def _state(consents: list[dict]) -> list[dict]:
    latest: dict[tuple[str, str], dict] = {}
    for row in consents:  # in ledger order: the last row seen per key is its latest
        if row["channel"] != "*":
            latest[(row["channel"], row["purpose"])] = row
    return [{"channel": ch, "purpose": p, "status": r["status"], "since": r["recorded_at"],
             "confirmed_at": r["confirmed_at"], "source": r["source"], "policy_version": r["policy_version"]}
            for (ch, p), r in sorted(latest.items())]


def _suppressions(conn: Any, contact: dict) -> list[dict]:
    addresses = [a for a in (contact["email"], contact["phone"]) if a]
    where = suppression_t.c.contact_id == contact["id"]
    if addresses:
        where = where | suppression_t.c.address.in_(addresses)
    return _rows(conn, suppression_t, where, drop=("contact_id",))


def _segments(conn: Any, project: Optional[ProjectSpec], cid: int, now: datetime) -> list[str]:
    if project is None:
        return []
    inside = []
    for name, segment in sorted(project.segments.items()):
        try:
            condition = compile_condition(segment.when, ConditionScope(now, project.segments))
        except Exception:  # a segment the project cannot evaluate (reported by `nurture validate`)
            continue
        if conn.execute(select(contact_t.c.id).where(contact_t.c.id == cid, condition)).first() is not None:
            inside.append(name)
    return inside


def _sync_runs(conn: Any, memberships: list[dict]) -> list[dict]:
    out = []
    for segment, target in sorted({(m["segment"], m["target"]) for m in memberships}):
        latest = conn.execute(select(func.max(sync_run_t.c.id)).where(sync_run_t.c.segment == segment,
                                                                      sync_run_t.c.target == target)).scalar()
        if latest is not None:
            out.extend(_rows(conn, sync_run_t, sync_run_t.c.id == latest, drop=("errors",)))
    return out
