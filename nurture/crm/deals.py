"""Deals in, the provider-independent part: a batch of deal snapshots — what a CRM says a deal
is now — becomes `deal` rows and events of the deal's contact, in the caller's transaction,
set-based: a fixed number of statements per batch, never one per deal (only recording
lifecycle moves takes one statement per stage and time, nurture.lifecycle's unit).

The rules (docs/crm.md):
- **Whose deal.** A deal's events go to ONE contact, so its revenue counts once: the first of
  its associated contacts (in the CRM's order) that Nurture knows by e-mail (its own or a
  second address in contact_identity); once a deal has a contact it keeps it — an erased one
  too, which gets no further events. Nurture creates no contact from a CRM: a deal none of
  whose contacts it knows is kept with no contact and every address it names (`deal_address`,
  in the CRM's order; the first also in `deal.email`), counted and reported (`without_contact`),
  and gets its contact — with its events — as soon as a later pull or import finds one of those
  addresses among the contacts: the first in the CRM's order (`attach_waiting`). An erased person
  (nurture.privacy) is never matched, stored or named.
- **Events, each once.** `deal_created` (when the deal first has a contact), one
  `deal_stage_changed {from, to, pipeline, amount}` per stage the deal enters after that
  (`from`: the stage stored before), `deal_won {value, currency, deal_id}` and `deal_lost`.
  Their event ids are deterministic — `deal:<crm>:<deal id>:created`, `…:stage:<stage>`,
  `…:won`, `…:lost` — and they are stored by the one writer of events
  (nurture.ingest.write_events), so reading the same deal again adds nothing. A won deal's `value` is its amount in the
  project's currency (the report reads a goal event's `value` as revenue); a deal in another
  currency keeps its amount and currency but has no `value`: Nurture converts nothing.
- **When.** A won or lost deal's events happen at its close date (unless that lies in the
  future), everything else at the deal's last modification; `deal_created` at its creation
  when the CRM says.
- **Lifecycle, forward only** (nurture.lifecycle): a won deal makes its contact a customer, an
  open one at least an opportunity; the stage the CRM gives a contact moves it forward too.
- **Trust nothing.** Amounts must be finite, 0 … 10¹², texts storable and short; a deal that
  fails is skipped and named in `problems`, the others are kept.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from datetime import datetime
from typing import Any, Iterable, Literal, Optional, Sequence

from sqlalchemy import exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from nurture.identities import Who, erased_contacts, linked_owners
from nurture.ingest import MAX_YEAR, MIN_YEAR, clean_name, normalize_email, text_problem, write_events
from nurture.lifecycle import STAGES, before, record_stage_changes
from nurture.privacy.tombstones import erased_among, not_erased
from nurture.runtime.sql import chunks, for_update, ids_in, insert_ignore, prebuilt, write_many
from nurture.store.tables import contact_t, deal_address_t, deal_t, event_t, identity_t
from nurture.store.times import aware

Outcome = Literal["open", "won", "lost"]
OUTCOMES: tuple[str, ...] = ("open", "won", "lost")
DEAL_CREATED, DEAL_STAGE_CHANGED, DEAL_WON, DEAL_LOST = "deal_created", "deal_stage_changed", "deal_won", "deal_lost"
DEAL_EVENTS = (DEAL_CREATED, DEAL_STAGE_CHANGED, DEAL_WON, DEAL_LOST)
MAX_AMOUNT = 1e12  # more is a typo or an attack, not a deal
MAX_ID_LENGTH = 64
MAX_STAGE_LENGTH = 100  # stage and pipeline names (HubSpot's are ids like `closedwon` or `12345678`)
MAX_CONTACTS = 20  # associated contacts looked at per deal, in the CRM's order
EXAMPLES = 5  # deals without a known contact named in a result
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class CrmContact:
    """A contact associated with a deal, as the CRM has it. `lifecycle_stage`: the Nurture
    stage (nurture.lifecycle.STAGES) the CRM says the contact reached, at `stage_at`."""
    email: str
    lifecycle_stage: Optional[str] = None
    stage_at: Optional[datetime] = None


@dataclass(frozen=True)
class DealSnapshot:
    """A deal as the CRM says it is now. `contacts` in the CRM's association order."""
    deal_id: str
    stage: str
    outcome: Outcome
    modified_at: datetime
    contacts: tuple[CrmContact, ...] = ()
    name: Optional[str] = None
    pipeline: Optional[str] = None
    amount: Optional[float] = None
    currency: Optional[str] = None
    closed_at: Optional[datetime] = None
    created_at: Optional[datetime] = None


@dataclass
class DealsResult:
    """What applying deals did. `events` counts the events stored (of which `stage_changes`,
    `won`, `lost`); `revenue`: the `value` of the deal_won events stored, in the project's
    currency; `without_contact`: deals whose contacts Nurture does not know (`examples`: a few
    of them, as (deal id, address)); `erased`: deals whose only contacts were erased;
    `other_currency`: won deals in another currency (no revenue); `corrected`: won deals whose
    amount or currency the CRM changed afterwards — their stored `deal_won` is corrected, and
    `corrected_revenue` is the change of revenue that made (negative for a lower amount);
    `problems`: deals skipped."""
    read: int = 0
    new: int = 0
    changed: int = 0
    attached: int = 0  # deals that waited for their contact and got it
    events: int = 0
    stage_changes: int = 0
    won: int = 0
    lost: int = 0
    revenue: float = 0.0
    without_contact: int = 0
    examples: list[tuple[str, Optional[str]]] = field(default_factory=list)
    erased: int = 0
    other_currency: int = 0
    corrected: int = 0
    corrected_revenue: float = 0.0
    stale: int = 0  # snapshots older than the stored deal (kept as stored)
    lifecycle: dict[str, int] = field(default_factory=dict)  # stage → contacts moved forward to it
    problems: list[str] = field(default_factory=list)

    def merge(self, other: "DealsResult") -> None:
        for name in ("read", "new", "changed", "attached", "events", "stage_changes", "won", "lost", "revenue",
                     "without_contact", "erased", "other_currency", "corrected", "corrected_revenue", "stale"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples = (self.examples + other.examples)[:EXAMPLES]
        for stage, n in other.lifecycle.items():
            self.lifecycle[stage] = self.lifecycle.get(stage, 0) + n
        self.problems.extend(other.problems)


# ---------------------------------------------------------------- checking what a CRM says


def amount_problem(amount: Optional[float]) -> Optional[str]:
    if amount is None:
        return None
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
        return f"amount {amount!r} is not a finite number"
    if amount < 0:
        return f"amount {amount:g} is negative"
    if amount > MAX_AMOUNT:
        return f"amount {amount:g} is over {MAX_AMOUNT:g}"
    return None


def _identifier_problem(what: str, value: Optional[str], limit: int, required: bool) -> Optional[str]:
    if value is None or value == "":
        return f"{what} is missing" if required else None
    if not isinstance(value, str):
        return f"{what} must be text"
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    problem = text_problem(value)
    if problem:
        return f"{what} {problem}"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return f"{what} contains a control character"
    return None


def check_snapshot(deal: DealSnapshot) -> tuple[Optional[DealSnapshot], Optional[str]]:
    """The snapshot made safe to store (name cleaned, currency upper-case, addresses
    normalized — an address that is not one is dropped), or None and why it is refused."""
    shown = deal.deal_id if isinstance(deal.deal_id, str) and len(deal.deal_id) <= MAX_ID_LENGTH else "?"
    for what, value, limit, required in (("deal id", deal.deal_id, MAX_ID_LENGTH, True),
                                         ("stage", deal.stage, MAX_STAGE_LENGTH, True),
                                         ("pipeline", deal.pipeline, MAX_STAGE_LENGTH, False)):
        problem = _identifier_problem(what, value, limit, required)
        if problem:
            return None, f"deal {shown}: {problem}"
    if deal.outcome not in OUTCOMES:
        return None, f"deal {shown}: outcome {deal.outcome!r} is not one of {', '.join(OUTCOMES)}"
    problem = amount_problem(deal.amount)
    if problem:
        return None, f"deal {shown}: {problem}"
    currency = deal.currency.strip().upper() if isinstance(deal.currency, str) and deal.currency.strip() else None
    if currency is not None and not _CURRENCY.fullmatch(currency):
        return None, f"deal {shown}: currency {deal.currency[:20]!r} is not a three-letter ISO 4217 code"
    name = clean_name(deal.name) if isinstance(deal.name, str) else None
    if name is not None and text_problem(name):
        name = None
    contacts = []
    for contact in deal.contacts[:MAX_CONTACTS]:
        email = _address(str(contact.email)[:320])  # no address is longer (RFC 5321)
        if email is None:
            continue  # a CRM contact without a usable address cannot be matched
        stage = contact.lifecycle_stage if contact.lifecycle_stage in STAGES else None
        at = contact.stage_at if isinstance(contact.stage_at, datetime) and stage else None
        if at is not None and not MIN_YEAR <= at.year <= MAX_YEAR:
            at = None  # the move is kept, dated at the pull
        contacts.append(CrmContact(email, stage, aware(at) if at else None))
    times = {}
    for what in ("modified_at", "closed_at", "created_at"):
        moment = getattr(deal, what)
        if moment is None and what == "modified_at":
            return None, f"deal {shown}: its last modification time is missing"
        if moment is not None and not isinstance(moment, datetime):
            return None, f"deal {shown}: {what} is not a time"
        if moment is not None and not MIN_YEAR <= moment.year <= MAX_YEAR:
            return None, f"deal {shown}: {what} is outside the years {MIN_YEAR}–{MAX_YEAR}"
        times[what] = None if moment is None else aware(moment)
    return replace(deal, name=name, currency=currency, amount=None if deal.amount is None else float(deal.amount),
                   contacts=tuple(contacts), **times), None


@lru_cache(maxsize=65536)
def _address(value: str) -> Optional[str]:
    """The normalized address, or None; cached: a CRM names the same people deal after deal,
    and checking an address costs more than storing a deal."""
    try:
        return normalize_email(value)
    except ValueError:
        return None


# ---------------------------------------------------------------- applying a batch


def event_id(crm: str, deal_id: str, what: str) -> str:
    """`deal:<crm>:<deal id>:<what>` — created, stage:<stage>, won, lost."""
    return f"deal:{crm}:{deal_id}:{what}"


def _when(deal: DealSnapshot, now: datetime) -> datetime:
    """A closed deal's events happen at its close date (a date in the future — HubSpot's
    expected close date — is not one), everything else at its last modification."""
    modified = min(deal.modified_at, now)
    if deal.outcome != "open" and deal.closed_at is not None and deal.closed_at <= now:
        return deal.closed_at
    return modified


def apply_deals(conn: Any, crm: str, snapshots: Sequence[DealSnapshot], *, now: datetime, currency: str,
                result: Optional[DealsResult] = None) -> DealsResult:
    """Store `snapshots` of `crm`'s deals, their events and lifecycle moves, in `conn`'s
    transaction (see the module docstring for the rules). `currency`: the project's."""
    result = result or DealsResult()
    result.read += len(snapshots)
    latest: dict[str, DealSnapshot] = {}
    for snapshot in snapshots:
        deal, problem = check_snapshot(snapshot)
        if deal is None:
            result.problems.append(problem or "a deal was refused")
            continue
        known = latest.get(deal.deal_id)
        if known is None or deal.modified_at >= known.modified_at:  # the same deal twice: the newer wins
            latest[deal.deal_id] = deal
    if not latest:
        return result
    deals = list(latest.values())
    emails = sorted({c.email for d in deals for c in d.contacts})
    erased = erased_among(conn, emails)
    contacts = _contacts_by_email(conn, [e for e in emails if e not in erased])
    stored = _stored(conn, crm, list(latest))
    keepers = _contacts_by_id(conn, {row.contact_id for row in stored.values() if row.contact_id is not None})
    gone = erased_contacts(conn, keepers)  # owners erased since: they keep their deals, get no events

    # First the deal rows, written only where the snapshot is not older than the stored deal —
    # checked again by the upsert itself (`_upsert`): another transaction may have stored a
    # newer snapshot since `_stored` read. Everything else follows only for the rows written.
    rows: list[dict] = []
    # deal id → its usable contacts, and (address, contact id) of the deal's contact
    owners: dict[str, tuple[list[CrmContact], Optional[tuple[Optional[str], int]]]] = {}
    for deal in deals:
        row = stored.get(deal.deal_id)
        if row is not None and deal.modified_at < aware(row.modified_at):
            continue
        usable = [c for c in deal.contacts if c.email not in erased]
        owner: Optional[tuple[Optional[str], int]]  # (address, contact id) of the deal's contact
        if row is not None and row.contact_id is not None:
            # Once a deal has a contact it keeps it — an erased one too (its address is gone,
            # not its deal): falling through to another contact would count the revenue twice.
            owner = (keepers.get(row.contact_id), row.contact_id)
        else:
            owner = next(((c.email, contacts[c.email]) for c in usable if c.email in contacts), None)
        owners[deal.deal_id] = (usable, owner)
        email = owner[0] if owner else (usable[0].email if usable else None)
        rows.append({"crm": crm, "deal_id": deal.deal_id, "contact_id": owner[1] if owner else None, "email": email,
                     "name": deal.name, "pipeline": deal.pipeline, "stage": deal.stage, "outcome": deal.outcome,
                     "amount": deal.amount, "currency": deal.currency, "closed_at": deal.closed_at,
                     "modified_at": deal.modified_at, "created_at": now, "updated_at": now})
    written = _upsert(conn, crm, rows)

    were_waiting: list[str] = []  # deals of the batch stored without a contact: their addresses are replaced
    waiting: list[dict] = []  # the addresses of the deals still without a contact, in the CRM's order
    records: list[dict] = []
    targets: dict[int, tuple[str, datetime]] = {}  # contact id → (furthest stage, when)
    corrections: list[dict] = []  # won deals whose amount changed: their deal_won, as it should read now
    for deal in deals:
        if deal.deal_id not in written:
            result.stale += 1
            continue
        row = stored.get(deal.deal_id)
        if row is not None and row.contact_id is None:
            were_waiting.append(deal.deal_id)
        usable, owner = owners[deal.deal_id]
        if owner is None:
            waiting.extend({"crm": crm, "deal_id": deal.deal_id, "position": i, "email": address}
                           for i, address in enumerate(dict.fromkeys(c.email for c in usable)))
            if deal.contacts and not usable:
                result.erased += 1
            else:
                result.without_contact += 1
                if len(result.examples) < EXAMPLES:
                    result.examples.append((deal.deal_id, usable[0].email if usable else None))
        if row is None:
            result.new += 1
        elif (row.stage, row.outcome, row.amount) != (deal.stage, deal.outcome, deal.amount):
            result.changed += 1
        if row is not None and row.contact_id is None and owner is not None:
            result.attached += 1
        if owner is None or owner[1] in gone:
            continue  # nothing is written about an erased person
        previous = row.stage if row is not None and row.contact_id is not None else None
        events = _events(crm, deal, owner[1], previous, currency, now)
        records.extend(events)
        if row is not None and row.contact_id is not None and deal.outcome == "won":
            # its deal_won may have been written at another amount — the first time it was won,
            # before it was lost or reopened and won again: `_correct_won` skips the ones that match
            corrections.extend(e for e in events if e["name"] == DEAL_WON)
        when = _when(deal, now)
        if deal.outcome == "won":
            _aim(targets, owner[1], "customer", when)
        elif deal.outcome == "open":
            _aim(targets, owner[1], "opportunity", when)
        for contact in usable:
            if contact.lifecycle_stage and contact.email in contacts:
                _aim(targets, contacts[contact.email], contact.lifecycle_stage, min(contact.stage_at or now, now))
    _keep_addresses(conn, crm, were_waiting, waiting)
    tracked = write_events(conn, records, source=f"crm:{crm}", now=now, create_contacts=False)
    _count_events(tracked.inserted_ids, records, result)
    _correct_won(conn, corrections, result)
    _move_stages(conn, targets, f"crm:{crm}", now, result)
    return result


def _correct_won(conn: Any, corrections: list[dict], result: DealsResult) -> None:
    """A won deal's amount corrected in the CRM (12000 typed for 1200): its `deal_won` event —
    written once, under the deal's own event id — is brought to the deal as it stands, so the
    revenue read from it (lead sources, CLV, offline conversions sent from now on) is the CRM's.
    The event keeps its id and time; an erased contact's event (its id hashed) is not found and
    stays empty. A conversion a `goal: deal_won` journey already recorded keeps the value it was
    recorded with (docs/crm.md, Known limits)."""
    if not corrections:
        return
    by_id = {c["event_id"]: c for c in corrections}
    stored = [row for part in chunks(list(by_id), 1000) for row in conn.execute(
        select(event_t.c.id, event_t.c.event_id, event_t.c.properties)
        .where(event_t.c.event_id.in_(part), event_t.c.name == DEAL_WON))]
    for pk, eid, properties in stored:  # (rare: one statement per corrected deal)
        now_won = by_id[eid]["properties"]
        wanted = {**(properties or {}), **{k: now_won[k] for k in _WON_MONEY if k in now_won}}
        if "value" not in now_won:
            wanted.pop("value", None)  # now in another currency: no revenue
        if wanted == (properties or {}):
            continue
        conn.execute(event_t.update().where(event_t.c.id == pk).values(properties=wanted))
        result.corrected += 1
        result.corrected_revenue += _revenue_of(wanted) - _revenue_of(properties or {})


_WON_MONEY = ("amount", "currency", "value")  # what a correction brings to the deal as it stands


def _revenue_of(properties: dict) -> float:
    value = properties.get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0



def _events(crm: str, deal: DealSnapshot, contact_id: int, previous: Optional[str], currency: str,
            now: datetime) -> list[dict]:
    """The event records of one deal (ingest's shape, naming the deal's contact by id: it may be
    known by another address than the CRM's); duplicates of stored ones are ignored there."""
    when = _when(deal, now)
    base = {"deal_id": deal.deal_id, "crm": crm, "pipeline": deal.pipeline}

    def record(what: str, name: str, at: datetime, properties: dict) -> dict:
        # As nurture.ingest's own checks leave an event: every value here was checked by check_snapshot.
        return {"event_id": event_id(crm, deal.deal_id, what), "email": None, "contact_id": contact_id,
                "name": name, "occurred_at": at, "properties": {**base, **properties}, "line": 0}

    created_at = min(deal.created_at, now) if deal.created_at is not None else when
    out = [record("created", DEAL_CREATED, created_at, {"name": deal.name, "stage": deal.stage,
                                                        "amount": deal.amount, "currency": deal.currency})]
    if previous is not None and previous != deal.stage:
        out.append(record(f"stage:{deal.stage}", DEAL_STAGE_CHANGED, when,
                          {"from": previous, "to": deal.stage, "amount": deal.amount}))
    if deal.outcome == "won":
        won = {"name": deal.name, "amount": deal.amount, "currency": deal.currency or currency}
        if deal.currency in (None, currency) and deal.amount is not None:
            won["value"] = deal.amount
        out.append(record("won", DEAL_WON, when, won))
    elif deal.outcome == "lost":
        out.append(record("lost", DEAL_LOST, when, {"name": deal.name, "stage": deal.stage, "amount": deal.amount,
                                                    "currency": deal.currency or currency}))
    return out


def _count_events(inserted: Iterable[str], records: list[dict], result: DealsResult) -> None:
    by_id = {r["event_id"]: r for r in records}
    for eid in inserted:
        record = by_id.get(eid)
        if record is None:
            continue
        result.events += 1
        name = record["name"]
        if name == DEAL_STAGE_CHANGED:
            result.stage_changes += 1
        elif name == DEAL_WON:
            result.won += 1
            result.revenue += float(record["properties"].get("value") or 0.0)
            if "value" not in record["properties"] and record["properties"].get("amount") is not None:
                result.other_currency += 1
        elif name == DEAL_LOST:
            result.lost += 1


def _aim(targets: dict[int, tuple[str, datetime]], contact_id: int, stage: str, when: datetime) -> None:
    """Keep the furthest stage a contact should reach (and when it reached it)."""
    current = targets.get(contact_id)
    if current is None or STAGES.index(stage) > STAGES.index(current[0]):
        targets[contact_id] = (stage, when)


def _move_stages(conn: Any, targets: dict[int, tuple[str, datetime]], source: str, now: datetime,
                 result: DealsResult) -> None:
    """Move each contact forward to its target stage, never back (a stage outside STAGES, set
    by an `update` step, is left alone as nurture.lifecycle.promote does), recording each move
    at its own time: one UPDATE per stage, one recording per (stage, time)."""
    if not targets:
        return
    stage_column = func.coalesce(contact_t.c.lifecycle_stage, "lead")
    current: dict[int, str] = {}
    for part in chunks(sorted(targets)):
        current.update(conn.execute(select(contact_t.c.id, stage_column).where(ids_in(contact_t.c.id, part))).all())
    by_stage: dict[str, list[int]] = {}
    moves: dict[tuple[str, datetime], list[tuple[int, str]]] = {}
    for cid, (stage, when) in targets.items():
        if cid in current and current[cid] in before(stage):
            by_stage.setdefault(stage, []).append(cid)
            moves.setdefault((stage, when), []).append((cid, current[cid]))
    for stage, ids in by_stage.items():
        for part in chunks(ids):
            conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part), stage_column.in_(before(stage)))
                         .values(lifecycle_stage=stage, updated_at=now))
        result.lifecycle[stage] = result.lifecycle.get(stage, 0) + len(ids)
    for (stage, when), rows in moves.items():
        record_stage_changes(conn, rows, stage, when, source)


def _contacts_by_email(conn: Any, emails: list[str]) -> dict[str, int]:
    """Address → contact of the addresses Nurture knows: a contact's own e-mail first, else a
    second address it is known by (`contact_identity`, as `track` and the Segment API find it);
    an erased contact is never found."""
    found: dict[str, int] = {}
    for part in chunks(emails):
        found.update(conn.execute(select(contact_t.c.email, contact_t.c.id).where(contact_t.c.email.in_(part))).all())
    others = [e for e in emails if e not in found]
    if others:
        linked = linked_owners(conn, [Who(email=e) for e in others])
        found.update((value, cid) for (kind, value), cid in linked.items() if kind == "email")
    return found


def _contacts_by_id(conn: Any, ids: set[int]) -> dict[int, Optional[str]]:
    """Contact id → current e-mail of the contacts deals already belong to (None: an erased
    one, or one known by other identifiers only)."""
    found: dict[int, Optional[str]] = {}
    for part in chunks(sorted(ids)):
        found.update(conn.execute(select(contact_t.c.id, contact_t.c.email).where(ids_in(contact_t.c.id, part))).all())
    return found


def _stored(conn: Any, crm: str, deal_ids: list[str]) -> dict[str, Any]:
    """The stored rows of these deals, locked on PostgreSQL (in id order: two batches naming the
    same deals cannot deadlock): a webhook and a pull of one deal take turns, and the second
    reads the first's row — its stage is the `from` of the second's stage event."""
    stored: dict[str, Any] = {}
    for part in chunks(sorted(deal_ids), 1000):
        for row in conn.execute(for_update(
                select(deal_t.c.deal_id, deal_t.c.contact_id, deal_t.c.stage, deal_t.c.outcome,
                       deal_t.c.amount, deal_t.c.currency, deal_t.c.modified_at)
                .where(deal_t.c.crm == crm, deal_t.c.deal_id.in_(part)).order_by(deal_t.c.deal_id), conn)):
            stored[row.deal_id] = row
    return stored


_UPDATED = ("contact_id", "email", "name", "pipeline", "stage", "outcome", "amount", "currency", "closed_at",
            "modified_at", "updated_at")


def _upsert(conn: Any, crm: str, rows: list[dict]) -> set[str]:
    """Insert or update deal rows by (crm, deal_id); `created_at` stays the first one's. The
    deal ids written: a stored deal modified later than the row is kept as stored — checked by
    the statement itself, not only by `_stored`'s read: two writers of a deal new to both (a
    webhook and a pull) both read nothing, and the second waits at the key for the first."""
    if not rows:
        return set()
    postgres = conn.dialect.name == "postgresql"

    def build() -> Any:
        stmt = (postgresql.insert if postgres else sqlite.insert)(deal_t)
        return stmt.on_conflict_do_update(index_elements=["crm", "deal_id"],
                                          set_={k: stmt.excluded[k] for k in _UPDATED},
                                          where=deal_t.c.modified_at <= stmt.excluded.modified_at)
    stmt = prebuilt(("deal_upsert", postgres), build)
    written = sum(write_many(conn, stmt, list(part)) for part in chunks(rows, 1000))
    if written == len(rows):
        return {row["deal_id"] for row in rows}
    # (rare) A newer snapshot stored meanwhile: its row, locked by the upsert whether updated
    # or not, is read back; the rows that lost are the ones whose stored deal is newer.
    ours = {row["deal_id"]: row["modified_at"] for row in rows}
    newer = {deal_id for part in chunks(sorted(ours), 1000) for deal_id, modified in conn.execute(
        select(deal_t.c.deal_id, deal_t.c.modified_at).where(deal_t.c.crm == crm, deal_t.c.deal_id.in_(part)))
        if aware(modified) > ours[deal_id]}
    return set(ours) - newer


def _keep_addresses(conn: Any, crm: str, were_waiting: list[str], addresses: list[dict]) -> None:
    """The addresses of the deals still waiting for their contact replace those stored for the
    deals of this batch that waited (a deal that got its contact keeps none). Called after the
    deal rows' upsert: on PostgreSQL a webhook and a pull storing the same deal take turns at
    its row, so the later one replaces what the earlier one stored."""
    replaced = list(dict.fromkeys(were_waiting + [a["deal_id"] for a in addresses]))
    for part in chunks(replaced, 1000):
        conn.execute(deal_address_t.delete().where(deal_address_t.c.crm == crm, deal_address_t.c.deal_id.in_(part)))
    insert_ignore(conn, deal_address_t, addresses, ("crm", "deal_id", "position"))


# ---------------------------------------------------------------- deals waiting for their contact


def attach_waiting(conn: Any, crm: str, *, now: datetime, currency: str,
                   result: Optional[DealsResult] = None) -> DealsResult:
    """Deals of `crm` stored without a contact one of whose addresses a contact now has
    (imported or tracked since; its own e-mail or a second address it is known by): they get
    the first such contact in the CRM's order, and their events, as if read again."""
    result = result or DealsResult()
    address = deal_address_t
    known = or_(exists().where(contact_t.c.email == address.c.email),
                exists().where(identity_t.c.kind == "email", identity_t.c.value == address.c.email,
                               not_erased(identity_t.c.contact_id)))
    found = select(address.c.deal_id).where(address.c.crm == crm, known)
    rows = conn.execute(select(deal_t).where(deal_t.c.crm == crm, deal_t.c.contact_id.is_(None),
                                             deal_t.c.deal_id.in_(found))).all()
    if not rows:
        return result
    named: dict[str, list[CrmContact]] = {}
    for part in chunks([r.deal_id for r in rows], 1000):
        for deal_id, email in conn.execute(select(address.c.deal_id, address.c.email)
                                           .where(address.c.crm == crm, address.c.deal_id.in_(part))
                                           .order_by(address.c.deal_id, address.c.position)):
            named.setdefault(deal_id, []).append(CrmContact(email))
    snapshots = [DealSnapshot(deal_id=r.deal_id, stage=r.stage, outcome=r.outcome, modified_at=aware(r.modified_at),
                              contacts=tuple(named.get(r.deal_id, ())), name=r.name, pipeline=r.pipeline,
                              amount=r.amount, currency=r.currency,
                              closed_at=aware(r.closed_at) if r.closed_at else None)
                 for r in rows]
    waiting = DealsResult()
    apply_deals(conn, crm, snapshots, now=now, currency=currency, result=waiting)
    # Only what attaching added counts: these deals were read before.
    for name in ("attached", "events", "stage_changes", "won", "lost", "revenue", "other_currency"):
        setattr(result, name, getattr(result, name) + getattr(waiting, name))
    for stage, n in waiting.lifecycle.items():
        result.lifecycle[stage] = result.lifecycle.get(stage, 0) + n
    return result


__all__ = ["CrmContact", "DealSnapshot", "DealsResult", "apply_deals", "attach_waiting", "check_snapshot", "event_id",
           "DEAL_EVENTS", "OUTCOMES"]
