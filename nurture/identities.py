"""Identities: the several identifiers one contact is known by — its e-mail, its phone, an
external user id (Segment's `userId`, `contact.external_id`) and the anonymous ids of the
browsers it used before it signed up (`contact_identity`, unique on (kind, value)).

`resolve` finds (or creates) the contact of one message from what it carries, in the order
external_id → e-mail → phone for the known person, the anonymous id for the visitor. A
message carrying only an anonymous id makes an anonymous contact (no e-mail, no phone), so
its events and lead source are kept. When a later message links that anonymous id to a known
person, `merge_contacts` moves the anonymous contact's events, enrollments, touches,
messages, consents, suppressions, deals, handovers, conversion deliveries and identities to the
known one (set-based SQL, in
the caller's transaction), leaves the anonymous row empty and records the merge in
`contact_merge`. The rules are written up in docs/ingest-segment.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Optional

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.exc import IntegrityError

from nurture.durations import parse_duration
from nurture.privacy.tombstones import ERASED_REASON
from nurture.runtime.sql import insert_ignore
from nurture.runtime.stable_random import in_holdout
from nurture.store.tables import (consent_t, contact_t, conversion_delivery_t, deal_t, enrollment_t, event_t,
                                  handover_t, identity_t, merge_t, message_t, suppression_t, touch_t, version_t)

KINDS = ("anonymous_id", "external_id", "email", "phone")
UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE
MERGED = "merged"  # exit_reason of an enrollment a merge ends (the younger of two, or barred by reentry)


@dataclass
class Who:
    """The identifiers one message carries (normalized by the caller)."""
    external_id: Optional[str] = None
    anonymous_id: Optional[str] = None
    email: Optional[str] = None
    phone: Optional[str] = None

    def identities(self) -> list[tuple[str, str]]:
        return [(kind, getattr(self, kind)) for kind in KINDS if getattr(self, kind)]


def find_by_identity(conn: Any, kind: str, value: Optional[str]) -> Optional[int]:
    """The contact known by (kind, value): the contact's own column first, then contact_identity."""
    if not value:
        return None
    column = {"external_id": contact_t.c.external_id, "email": contact_t.c.email, "phone": contact_t.c.phone}.get(kind)
    if column is not None:
        found = conn.execute(select(contact_t.c.id).where(column == value).order_by(contact_t.c.id).limit(1)).scalar()
        if found is not None:
            return found
    return conn.execute(select(identity_t.c.contact_id).where(identity_t.c.kind == kind,
                                                              identity_t.c.value == value)).scalar()


def phone_holders(conn: Any, phone: str) -> list[int]:
    """Every contact known by an E.164 number — in its `phone` column or as a phone identity —
    lowest id first (a phone, unlike an e-mail address, may be several contacts')."""
    by_column = conn.execute(select(contact_t.c.id).where(contact_t.c.phone == phone)).scalars().all()
    by_identity = conn.execute(select(identity_t.c.contact_id).where(
        identity_t.c.kind == "phone", identity_t.c.value == phone)).scalars().all()
    return sorted(set(by_column) | set(by_identity))


def linked_owners(conn: Any, whos: list[Who]) -> dict[tuple[str, str], int]:
    """(kind, value) → contact of every identifier of `whos` recorded in contact_identity, in
    one query per 2,000 values; erased contacts left out (they are never found again)."""
    pairs = {pair for who in whos for pair in who.identities()}
    values = sorted({value for _, value in pairs})
    found: dict[tuple[str, str], int] = {}
    for start in range(0, len(values), 2000):
        for kind, value, contact_id in conn.execute(
                select(identity_t.c.kind, identity_t.c.value, identity_t.c.contact_id)
                .where(identity_t.c.value.in_(values[start:start + 2000]))):
            if (kind, value) in pairs:
                found[(kind, value)] = contact_id
    gone = erased_contacts(conn, set(found.values()))
    return {pair: cid for pair, cid in found.items() if cid not in gone}


def known_contact(conn: Any, who: Who) -> Optional[int]:
    """The known person of a message: by external id, else e-mail, else phone."""
    for kind in ("external_id", "email", "phone"):
        found = find_by_identity(conn, kind, getattr(who, kind))
        if found is not None:
            return found
    return None


def erased_contacts(conn: Any, contact_ids: Any) -> set[int]:
    """The contacts among `contact_ids` that were erased (their `erased` suppression): never
    found again by any identifier, never written to."""
    ids = [cid for cid in set(contact_ids) if cid is not None]
    if not ids:
        return set()
    return set(conn.execute(select(suppression_t.c.contact_id).where(
        suppression_t.c.contact_id.in_(ids), suppression_t.c.reason == ERASED_REASON)).scalars())


def link(conn: Any, contact_id: int, who: Who, now: datetime) -> None:
    """Record every identifier of `who` as the contact's; one already known stays with its contact."""
    rows = [{"contact_id": contact_id, "kind": kind, "value": value, "first_seen_at": now}
            for kind, value in who.identities()]
    if rows:
        insert_ignore(conn, identity_t, rows, ("kind", "value"))


def _is_anonymous(conn: Any, contact_id: int) -> bool:
    row = conn.execute(select(contact_t.c.email, contact_t.c.phone, contact_t.c.external_id)
                       .where(contact_t.c.id == contact_id)).one_or_none()
    return row is not None and not any(row)


def resolve(conn: Any, who: Who, now: datetime, *, create: bool = True) -> tuple[Optional[int], Optional[int]]:
    """(contact id, the anonymous contact merged into it by this call or None) of a message.
    The anonymous contact of `who.anonymous_id` is merged into the known person when the
    message names both; a message naming only an anonymous id gets (or creates) its anonymous
    contact. (None, None) when either is an erased person: nothing is written about them."""
    known = known_contact(conn, who)
    anonymous = find_by_identity(conn, "anonymous_id", who.anonymous_id)
    if erased_contacts(conn, (known, anonymous)):
        return None, None
    merged = None
    if known is not None and anonymous is not None and anonymous != known and _is_anonymous(conn, anonymous):
        merge_contacts(conn, anonymous, known, reason="identify", now=now)
        merged = anonymous
    elif known is None and anonymous is not None:
        known = anonymous  # the visitor identifies: its own contact becomes the known one
    if known is None:
        if not create:
            return None, None
        created = conn.execute(contact_t.insert().values(
            email=None, phone=None, external_id=None, lifecycle_stage="lead", score=0.0, attributes={},
            created_at=now, updated_at=now)).inserted_primary_key[0]
        link(conn, created, who, now)
        filled = _fill_identifiers(conn, created, who, now)
        taken = (find_by_identity(conn, kind, value) for kind, value in who.identities() if kind not in filled)
        if any(owner != created for owner in taken):
            # A concurrent request created this person first (a page's first calls, a lead
            # delivered twice at once, an event of the address over /events): nobody held any
            # identifier of `who` when this call looked, so whoever holds one it could not take
            # committed it since (PostgreSQL; SQLite's writers take turns). Its contact is the
            # one; the one just made is removed, nothing refers to it yet.
            conn.execute(delete(identity_t).where(identity_t.c.contact_id == created))
            conn.execute(delete(contact_t).where(contact_t.c.id == created))
            return resolve(conn, who, now, create=create)
        return created, merged
    # linked before filled: a concurrent call naming the same new e-mail or phone waits for
    # this transaction at the (kind, value) key and then finds the identifier taken
    link(conn, known, _own_identifiers(conn, known, who), now)
    _fill_identifiers(conn, known, who, now)
    return known, merged


def _own_identifiers(conn: Any, contact_id: int, who: Who) -> Who:
    """The identifiers of `who` a known contact may be found by from now on: an e-mail or a
    phone only where it is (or, the contact having none, becomes) the contact's own. A message
    naming a contact together with another address records nothing for it: the public write
    key would otherwise let a stranger claim anyone's address for a contact of their own —
    whose sign-up, events and double opt-in confirmation the stranger's contact then got."""
    row = conn.execute(select(contact_t.c.email, contact_t.c.phone).where(contact_t.c.id == contact_id)).one()
    return replace(who, email=who.email if row.email in (None, who.email) else None,
                   phone=who.phone if row.phone in (None, who.phone) else None)


def _fill_identifiers(conn: Any, contact_id: int, who: Who, now: datetime) -> set[str]:
    """Give the contact the message's external id, e-mail and phone where it has none and no
    other contact holds them (the unique columns are never violated); the kinds given. On
    PostgreSQL a transaction that is not linked to the identifier (`nurture import contacts`,
    an event over /events: nurture.ingest) may have taken it meanwhile; the update then waits
    for it and fails with a unique violation — undone (a savepoint), and the identifiers read
    again."""
    for _ in range(3):
        row = conn.execute(select(contact_t.c.email, contact_t.c.phone, contact_t.c.external_id)
                           .where(contact_t.c.id == contact_id)).one()
        values: dict[str, Any] = {}
        for kind, current in (("external_id", row.external_id), ("email", row.email), ("phone", row.phone)):
            wanted = getattr(who, kind)
            if wanted and current is None and find_by_identity(conn, kind, wanted) in (None, contact_id):
                values[kind] = wanted
        if not values:
            return set()
        stmt = update(contact_t).where(contact_t.c.id == contact_id).values(**values, updated_at=now)
        if conn.dialect.name != "postgresql" or values.keys() == {"phone"}:  # (a phone is not unique)
            conn.execute(stmt)
            return set(values)
        try:
            with conn.begin_nested():
                conn.execute(stmt)
            return set(values)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
    return set()


# The fields an anonymous identify can give a visitor, kept by a merge where the known contact has none.
_FILLED = (contact_t.c.first_name, contact_t.c.last_name, contact_t.c.timezone, contact_t.c.locale,
           contact_t.c.country)


def merge_contacts(conn: Any, from_id: int, into_id: int, *, reason: str, now: datetime) -> dict:
    """Move everything of contact `from_id` to `into_id` in the caller's transaction and record
    it in contact_merge; the counts of what moved. An active enrollment of `from_id` that the
    merged person may not have (`_barred_by_merge`) exits with reason `merged`; one that stays
    and has nothing done for it yet takes the merged person's holdout group (`_regroup`).
    Touches: the earlier `first`, the later `last`. The known contact's empty fields take the
    visitor's."""
    counts: dict[str, int] = {}
    barred = _barred_by_merge(conn, from_id, into_id)
    if barred:
        conn.execute(update(enrollment_t).where(enrollment_t.c.id.in_(barred)).values(
            status="exited", step_id=None, next_due_at=None, left_at=now, exit_reason=MERGED))
    counts["enrollments_exited"] = len(barred)
    counts["enrollments_regrouped"] = _regroup(conn, from_id, into_id)
    # A date-trigger occurrence both contacts entered for (uq_enrollment_trigger_key): the moved
    # enrollment keeps its history and gives up the key; the kept one still bars a second entry.
    other = enrollment_t.alias("other")
    conn.execute(update(enrollment_t).where(
        enrollment_t.c.contact_id == from_id, enrollment_t.c.trigger_key.isnot(None),
        exists().where(other.c.contact_id == into_id, other.c.journey == enrollment_t.c.journey,
                       other.c.trigger_key == enrollment_t.c.trigger_key)).values(trigger_key=None))
    for name, table in (("events", event_t), ("enrollments", enrollment_t), ("messages", message_t),
                        ("consents", consent_t), ("suppressions", suppression_t), ("deals", deal_t),
                        ("handovers", handover_t), ("conversion_deliveries", conversion_delivery_t),
                        ("identities", identity_t)):
        counts[name] = conn.execute(update(table).where(table.c.contact_id == from_id)
                                    .values(contact_id=into_id)).rowcount or 0
    counts["touches"] = _merge_touches(conn, from_id, into_id)
    rows = {r.id: r for r in conn.execute(select(contact_t.c.id, contact_t.c.attributes, *_FILLED)
                                          .where(contact_t.c.id.in_((from_id, into_id))))}
    theirs, ours = rows[from_id], rows[into_id]
    # what the visitor told about itself (an anonymous identify) fills what the known contact lacks
    filled = {c.name: getattr(theirs, c.name) for c in _FILLED
              if getattr(ours, c.name) is None and getattr(theirs, c.name) is not None}
    merged_attrs = {**(theirs.attributes or {}), **(ours.attributes or {})}
    conn.execute(update(contact_t).where(contact_t.c.id == into_id).values(attributes=merged_attrs, **filled,
                                                                           updated_at=now))
    conn.execute(update(contact_t).where(contact_t.c.id == from_id).values(
        email=None, phone=None, external_id=None, **{c.name: None for c in _FILLED}, attributes={}, updated_at=now))
    conn.execute(merge_t.insert().values(from_contact_id=from_id, into_contact_id=into_id, reason=reason,
                                         merged_at=now, counts=counts))
    return counts


def _barred_by_merge(conn: Any, from_id: int, into_id: int) -> list[int]:
    """The enrollments to exit before `from_id`'s move onto `into_id`. Two active ones of a
    journey: the younger (the person is never twice at once in a journey). An active one of
    `from_id` in a journey `into_id` was ever in: exited when the journey's `reentry` (of the
    enrollment's recorded version) would not have let the one person enter again — `never`,
    or a duration not yet past between the two entries; `always` (or no recorded version)
    lets it stay."""
    theirs = list(conn.execute(select(enrollment_t.c.id, enrollment_t.c.journey, enrollment_t.c.version,
                                      enrollment_t.c.entered_at)
                               .where(enrollment_t.c.contact_id == from_id, enrollment_t.c.status == "active")))
    if not theirs:
        return []
    ours: dict[str, list[Any]] = {}
    for row in conn.execute(select(enrollment_t.c.id, enrollment_t.c.journey, enrollment_t.c.status,
                                   enrollment_t.c.entered_at)
                            .where(enrollment_t.c.contact_id == into_id,
                                   enrollment_t.c.journey.in_({t.journey for t in theirs}))):
        ours.setdefault(row.journey, []).append(row)
    rules = _reentry_rules(conn, {(t.journey, t.version) for t in theirs if t.journey in ours})
    barred = []
    for t in theirs:
        history = ours.get(t.journey, [])
        active = [o for o in history if o.status == "active"]
        rule = rules.get((t.journey, t.version))
        if active:
            barred.append(max((active[0], t), key=lambda r: (r.entered_at, r.id)).id)
        elif history and (rule == "never" or isinstance(rule, timedelta) and any(
                abs(t.entered_at - o.entered_at) < rule for o in history)):
            barred.append(t.id)
    return barred


def _regroup(conn: Any, from_id: int, into_id: int) -> int:
    """The holdout flag of `from_id`'s active enrollments (those `_barred_by_merge` left),
    hashed again for `into_id` where nothing has been done for the enrollment yet — no message
    row (sent, or held out at a send) and no handover row (handed over, or held out at a
    handover): the holdout is stable per person and journey (in_holdout, as enrollment hashes
    it), and the visitor's hash was the person's only while nobody knew who it was. An
    enrollment with such a row keeps its flag: what it went through is its history, and the
    report counts it in the group it went through. The share is the enrollment's recorded
    version's `holdout`; without a recorded version the flag stays. How many changed."""
    rows = list(conn.execute(select(enrollment_t.c.id, enrollment_t.c.journey, enrollment_t.c.version,
                                    enrollment_t.c.holdout).where(
        enrollment_t.c.contact_id == from_id, enrollment_t.c.status == "active",
        ~exists().where(message_t.c.enrollment_id == enrollment_t.c.id),
        ~exists().where(handover_t.c.enrollment_id == enrollment_t.c.id))))
    specs = _recorded_specs(conn, {(r.journey, r.version) for r in rows})
    changed: dict[bool, list[int]] = {True: [], False: []}
    for r in rows:
        spec = specs.get((r.journey, r.version))
        try:
            share = float((spec or {}).get("holdout") or 0.0)
        except (TypeError, ValueError):  # unreadable: as without a recorded version
            continue
        if spec is not None and in_holdout(r.journey, into_id, share) != bool(r.holdout):
            changed[not r.holdout].append(r.id)
    for flag, ids in changed.items():
        if ids:
            conn.execute(update(enrollment_t).where(enrollment_t.c.id.in_(ids)).values(holdout=flag))
    return len(changed[True]) + len(changed[False])


def _recorded_specs(conn: Any, versions: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(journey, version) -> the spec the tick recorded for it (journeyversion.spec)."""
    specs: dict[tuple[str, str], dict] = {}
    if not versions:
        return specs
    for journey, version, spec in conn.execute(
            select(version_t.c.journey, version_t.c.version, version_t.c.spec)
            .where(version_t.c.journey.in_({j for j, _ in versions}))):
        if (journey, version) in versions and isinstance(spec, dict):
            specs[(journey, version)] = spec
    return specs


def _reentry_rules(conn: Any, versions: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """(journey, version) -> its `reentry` ("never", "always" or a timedelta), read from the
    version the tick recorded (journeyversion.spec; a spec leaves out the default `never`)."""
    rules: dict[tuple[str, str], Any] = {}
    for (journey, version), spec in _recorded_specs(conn, versions).items():
        value = spec.get("reentry") or "never"
        try:
            rules[(journey, version)] = value if value in ("never", "always") else (
                TypeAdapter(timedelta).validate_python(value) if str(value).startswith("P")  # an old record's ISO form
                else parse_duration(value))
        except (ValueError, ValidationError):
            continue  # unreadable: as without a recorded version
    return rules


def _merge_touches(conn: Any, from_id: int, into_id: int) -> int:
    rows = {(r.contact_id, r.touch): r for r in conn.execute(
        select(touch_t).where(touch_t.c.contact_id.in_((from_id, into_id))))}
    moved = 0
    for touch, theirs_wins in (("first", lambda a, b: a.occurred_at < b.occurred_at),
                               ("last", lambda a, b: a.occurred_at > b.occurred_at)):
        theirs, ours = rows.get((from_id, touch)), rows.get((into_id, touch))
        if theirs is None:
            continue
        if ours is None or theirs_wins(theirs, ours):
            if ours is not None:
                conn.execute(delete(touch_t).where(and_(touch_t.c.contact_id == into_id, touch_t.c.touch == touch)))
            conn.execute(update(touch_t).where(touch_t.c.contact_id == from_id, touch_t.c.touch == touch)
                         .values(contact_id=into_id))
            moved += 1
    conn.execute(delete(touch_t).where(touch_t.c.contact_id == from_id))
    return moved
