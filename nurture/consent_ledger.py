"""The consent ledger and the suppression list: the one owner of how consent is read and written.

The ledger is append-only; the current state of (contact, channel, purpose) is its latest
row — latest by `recorded_at`, then by id (two rows recorded in the same instant: the one
written last). Every reader of "the latest row" goes through this module, in the form its
caller needs:

- `current_consent` — the send pipeline's batch read (check 1), with its wall-clock rule for
  revocations;
- `current_state` — one contact's latest row (double opt-in, recipient pages, webhooks);
- `latest_of_rows` — for given rows, the latest row up to a time of the key each belongs to
  (are double opt-in requests still the current state?), and `revocations_until`, the time up
  to which a revocation counts (the wall-clock rule);
- `history` — one contact's rows, the latest first (what a STOP revoked, for START);
- `standing_revocations` — which (contact, channel) a revocation still holds for, whenever
  recorded (an import's grant without a time does not outrank it);
- `latest_consent_status` — the same as a correlated SQL expression (the `consent:`
  condition, segments' ads consent), so it runs in the database for a whole batch;
- `latest_rows` — the latest row of every (contact, channel, purpose) as a subquery
  (double opt-in hygiene).

Writes: `record_consent` (one row) and `record_consents` (one status for many keys).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple, Optional

from sqlalchemy import bindparam, case, func, select

from nurture.runtime.sql import ids_in, write_many
from nurture.store.tables import consent_t, contact_t, suppression_t


@dataclass(frozen=True)
class ConsentState:
    id: int
    status: str  # granted | revoked | pending
    recorded_at: datetime
    confirmed_at: Optional[datetime]


def _latest_first(table: Any) -> tuple:
    """The ledger's order, newest first: what "the latest row" means."""
    return table.c.recorded_at.desc(), table.c.id.desc()


# ---------------------------------------------------------------- reads


def current_state(conn: Any, contact_id: int, channel: str, purpose: str) -> Optional[ConsentState]:
    """The latest row of one contact's (channel, purpose), whenever it was recorded."""
    row = conn.execute(select(consent_t.c.id, consent_t.c.status, consent_t.c.recorded_at, consent_t.c.confirmed_at)
                       .where(consent_t.c.contact_id == contact_id, consent_t.c.channel == channel,
                              consent_t.c.purpose == purpose)
                       .order_by(*_latest_first(consent_t)).limit(1)).first()
    return ConsentState(*row) if row else None


class LedgerEntry(NamedTuple):
    id: int
    status: str
    source: str
    recorded_at: datetime


def revocations_until(now: datetime, wall: Optional[datetime] = None) -> datetime:
    """Up to when a revocation counts for work done at the logical time `now`: the later of
    `now` and the wall clock (`wall`, default: the real time). A grant counts from its recorded
    time only; a revocation recorded after a late run's logical time still stops it (see
    `current_consent`) — the rule every reader of "may we still" applies."""
    return max(now, wall or datetime.now(timezone.utc))


def latest_of_rows(conn: Any, row_ids: Iterable[int], until: datetime) -> dict[int, tuple[int, str]]:
    """Ledger row id → (id, status) of the latest row recorded up to `until` of the (contact,
    channel, purpose) it belongs to — whether each row is still the current state — in one
    query per 5,000 rows (each an index seek on ix_consent_lookup)."""
    asked, later = consent_t.alias("asked"), consent_t.alias("later")
    latest = (select(later.c.id, later.c.status)
              .where(later.c.contact_id == asked.c.contact_id, later.c.channel == asked.c.channel,
                     later.c.purpose == asked.c.purpose, later.c.recorded_at <= bindparam("until"))
              .order_by(*_latest_first(later)).limit(1))
    stmt = select(asked.c.id, latest.with_only_columns(later.c.id).scalar_subquery(),
                  latest.with_only_columns(later.c.status).scalar_subquery()).where(ids_in(asked.c.id, ()))
    ids = list(row_ids)
    found: dict[int, tuple[int, str]] = {}
    for start in range(0, len(ids), 5000):
        for row_id, latest_id, status in conn.execute(stmt, {"until": until, "ids_id": ids[start:start + 5000]}):
            if latest_id is not None:
                found[row_id] = (latest_id, status)
    return found


def history(conn: Any, contact_id: int, channel: str, purpose: str) -> list[LedgerEntry]:
    """Every row of one contact's (channel, purpose), the latest first (what came before the
    current state: which grant a STOP revoked)."""
    rows = conn.execute(select(consent_t.c.id, consent_t.c.status, consent_t.c.source, consent_t.c.recorded_at)
                        .where(consent_t.c.contact_id == contact_id, consent_t.c.channel == channel,
                               consent_t.c.purpose == purpose)
                        .order_by(*_latest_first(consent_t))).all()
    return [LedgerEntry(*row) for row in rows]


def standing_revocations(conn: Any, keys: Iterable[tuple[int, str]], purpose: str = "marketing"
                         ) -> dict[tuple[int, str], datetime]:
    """(contact id, channel) → when it was revoked, for each key whose latest grant or
    revocation — whenever recorded, pending rows aside — is a revocation: what a grant without
    a time of its own (an import's) must not outrank."""
    wanted = set(keys)
    found: dict[tuple[int, str], tuple[str, datetime]] = {}
    ids = sorted({cid for cid, _ in wanted})
    channels = sorted({channel for _, channel in wanted})
    for start in range(0, len(ids), 5000):
        rows = conn.execute(select(consent_t.c.contact_id, consent_t.c.channel, consent_t.c.status,
                                   consent_t.c.recorded_at)
                            .where(ids_in(consent_t.c.contact_id, ids[start:start + 5000]),
                                   consent_t.c.channel.in_(channels), consent_t.c.purpose == purpose,
                                   consent_t.c.status.in_(("granted", "revoked")))
                            .order_by(consent_t.c.contact_id, consent_t.c.recorded_at, consent_t.c.id)).all()
        for cid, channel, status, recorded_at in rows:  # oldest first: the last one seen is the latest
            found[(cid, channel)] = (status, recorded_at)
    return {key: at for key, (status, at) in found.items() if status == "revoked" and key in wanted}


# Stands for "confirmed at some time" in current_consent's answer: the send checks only ask
# whether a double opt-in was confirmed, never when.
CONFIRMED = datetime(1970, 1, 1, tzinfo=timezone.utc)


# Decided in SQL, so no timestamp is converted per row (a batch reads thousands): whether
# the row is in force at `now`, and whether it was confirmed. Oldest first: the last row seen
# per contact is its latest (the same order as _latest_first, read forwards). Built once.
_CURRENT = (select(consent_t.c.contact_id, consent_t.c.status,
                   case((consent_t.c.confirmed_at.is_(None), False), else_=True),
                   case((consent_t.c.recorded_at <= bindparam("now"), True), else_=False))
            .where(ids_in(consent_t.c.contact_id, ()), consent_t.c.channel == bindparam("channel"),
                   consent_t.c.purpose == bindparam("purpose"), consent_t.c.recorded_at <= bindparam("until"))
            .order_by(consent_t.c.contact_id, consent_t.c.recorded_at, consent_t.c.id))


def current_consent(conn: Any, contact_ids: Iterable[int], channel: str, purpose: str,
                    now: datetime, wall: Optional[datetime] = None) -> dict[int, tuple[str, Optional[datetime]]]:
    """Consent at send time, for a batch in one query per 5,000 contacts: contact id →
    (status, CONFIRMED or None) of the latest row recorded at or before `now` — unless the latest
    row recorded up to the wall clock (`wall`, default: the real time) is a revocation, which
    then wins.

    A tick runs at a logical time (`--now`, a flow run's scheduled start) that may lie before
    the wall clock. A grant is in force from its recorded time only; a revocation is in force
    from its recorded time *or earlier*: a message handed over today must never reach someone
    who revoked before it left, whatever the tick's logical clock says."""
    ids = list(contact_ids)
    until = revocations_until(now, wall)
    latest: dict[int, tuple[str, Optional[datetime]]] = {}
    later: dict[int, str] = {}
    # Decided in SQL, so no timestamp is converted per row (a batch reads thousands):
    # whether the row is in force at `now`, and whether it was confirmed.
    for chunk_start in range(0, len(ids), 5000):
        chunk = ids[chunk_start:chunk_start + 5000]
        rows = conn.execute(_CURRENT, {"ids_contact_id": chunk, "channel": channel, "purpose": purpose,
                                       "now": now, "until": until}).all()  # (one fetch, not one per row)
        for contact_id, status, was_confirmed, current in rows:
            if current:
                latest[contact_id] = (status, CONFIRMED if was_confirmed else None)
            else:
                later[contact_id] = status
    for contact_id, status in later.items():
        if status == "revoked":
            latest[contact_id] = ("revoked", None)
    return latest


def latest_consent_status(channel: str, purpose: str, now: datetime, contact_id: Any = None) -> Any:
    """The status of the latest row recorded at or before `now`, as a scalar SQL subquery
    correlated to `contact_id` (default: the contact table's id) — NULL when there is none."""
    c = consent_t.alias("consent_now")
    return (select(c.c.status)
            .where(c.c.contact_id == (contact_t.c.id if contact_id is None else contact_id),
                   c.c.channel == channel, c.c.purpose == purpose, c.c.recorded_at <= now)
            .order_by(*_latest_first(c)).limit(1).scalar_subquery())


def latest_rows(now: datetime) -> Any:
    """The current ledger row of every (contact, channel, purpose) at `now`, as a subquery in
    one pass: columns id, contact_id, channel, purpose, status, recorded_at and `rank` (1 on
    the latest row)."""
    rank = func.row_number().over(
        partition_by=(consent_t.c.contact_id, consent_t.c.channel, consent_t.c.purpose),
        order_by=_latest_first(consent_t)).label("rank")
    return select(consent_t.c.id, consent_t.c.contact_id, consent_t.c.channel, consent_t.c.purpose,
                  consent_t.c.status, consent_t.c.recorded_at, rank).where(consent_t.c.recorded_at <= now).subquery()


# ---------------------------------------------------------------- writes


class Proof(NamedTuple):
    """Who clicked: the request's client address and user agent, for a consent given (or
    withdrawn) on one of Nurture's web pages — what an auditor asks besides time, source and
    policy version. Behind a reverse proxy, run `nurture web` with the proxy's address trusted
    for X-Forwarded-For (uvicorn --forwarded-allow-ips) or the proxy's address is recorded."""
    ip_address: Optional[str] = None
    user_agent: Optional[str] = None


MAX_USER_AGENT = 512


def proof_of(client_host: Optional[str], user_agent: Optional[str]) -> Proof:
    """A Proof from a request: the address only when it is one, the user agent without control
    characters and capped (it is whatever the browser sent)."""
    address = None
    if client_host:
        try:
            address = str(ipaddress.ip_address(client_host.strip()))
        except ValueError:
            address = None
    agent = None
    if user_agent:
        agent = re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", " ", user_agent).strip()[:MAX_USER_AGENT] or None
    return Proof(address, agent)


def record_consent(conn: Any, contact_id: int, channel: str, status: str, *, purpose: str = "marketing",
                   source: str, at: datetime, policy_version: str = "", confirmed: bool = False,
                   proof: Proof = Proof()) -> int:
    """Append one row; its id. `confirmed` (double opt-in) stamps `confirmed_at` on a grant;
    `proof`: the web request it came from."""
    result = conn.execute(consent_t.insert().values(
        contact_id=contact_id, channel=channel, purpose=purpose, status=status, source=source,
        policy_version=policy_version, recorded_at=at,
        confirmed_at=at if (confirmed and status == "granted") else None,
        ip_address=proof.ip_address, user_agent=proof.user_agent))
    return int(result.inserted_primary_key[0])


def append_consents(conn: Any, entries: Iterable[dict]) -> int:
    """Append many rows at once (an import): each entry {contact_id, channel, status, purpose,
    source, at, policy_version, confirmed} — `record_consent`'s row, in one executemany per
    5,000 instead of one statement each; how many."""
    rows = [dict(contact_id=e["contact_id"], channel=e["channel"], purpose=e.get("purpose", "marketing"),
                 status=e["status"], source=e["source"], policy_version=e.get("policy_version", ""),
                 recorded_at=e["at"], confirmed_at=e["at"] if (e.get("confirmed") and e["status"] == "granted") else None,
                 ip_address=None, user_agent=None) for e in entries]
    for start in range(0, len(rows), 5000):  # (the driver's executemany on SQLite, arrays on PostgreSQL)
        write_many(conn, _APPEND, rows[start:start + 5000])
    return len(rows)


_APPEND = consent_t.insert()


def record_consents(conn: Any, keys: Iterable[tuple[int, str, str]], status: str, *, source: str,
                    at: datetime, policy_version: str = "") -> int:
    """Append one unconfirmed row with `status` per (contact id, channel, purpose), in one
    statement; how many."""
    rows = [dict(contact_id=c, channel=ch, purpose=p, status=status, source=source, policy_version=policy_version,
                 recorded_at=at, confirmed_at=None) for c, ch, p in keys]
    if rows:
        conn.execute(consent_t.insert(), rows)
    return len(rows)


ERASURE_TOMBSTONE = "erased"  # the status (and channel/purpose "*") of an erasure's tombstone row


def erase_consents(conn: Any, contact_id: int, *, subject_hash: Optional[str], reason: str, at: datetime,
                   policy_version: str = "") -> int:
    """An erasure (GDPR Art. 17, nurture.privacy.erase) — the one write that changes rows
    already in the ledger: the contact's rows are pseudonymized (their `source` cut to its kind,
    `import:leads-jane-doe.csv` → `import`; channel, purpose, status and times stay, so the
    history still adds up for reports) and one tombstone row is appended — channel and purpose
    `*`, status `erased`, `source` `erasure:<reason>`, `subject_hash` the SHA-256 of the
    normalized e-mail, recorded at the erasure's time. The tombstone matches no channel, so no
    reader of "the latest row" of a channel ever sees it. Returns how many rows were pseudonymized."""
    rows = conn.execute(select(consent_t.c.id, consent_t.c.source, consent_t.c.ip_address, consent_t.c.user_agent)
                        .where(consent_t.c.contact_id == contact_id, consent_t.c.status != ERASURE_TOMBSTONE)).all()
    changed = [{"cid": row.id, "kind": (row.source or "").split(":", 1)[0]} for row in rows
               if row.source != (row.source or "").split(":", 1)[0] or row.ip_address or row.user_agent]
    if changed:  # the proof of a web consent (address, browser) is personal data too
        conn.execute(consent_t.update().where(consent_t.c.id == bindparam("cid")).values(
            source=bindparam("kind"), ip_address=None, user_agent=None), changed)
    conn.execute(consent_t.insert().values(
        contact_id=contact_id, channel="*", purpose="*", status=ERASURE_TOMBSTONE, source=f"erasure:{reason}",
        policy_version=policy_version, recorded_at=at, confirmed_at=None, subject_hash=subject_hash))
    return len(rows)


# ---------------------------------------------------------------- the suppression list


def is_suppressed(conn: Any, *, address: str, reason: str) -> bool:
    """Whether the address is already on the suppression list for this reason: webhooks are
    replayed by their providers, and a replay must neither add a row nor count as applied."""
    return conn.execute(select(suppression_t.c.id).where(suppression_t.c.address == address.lower(),
                                                         suppression_t.c.reason == reason).limit(1)).first() is not None


def suppress(conn: Any, *, reason: str, at: datetime, contact_id: Optional[int] = None,
             address: Optional[str] = None, channel: Optional[str] = None) -> None:
    conn.execute(suppression_t.insert().values(contact_id=contact_id, address=address.lower() if address else None,
                                               channel=channel, reason=reason, created_at=at))
