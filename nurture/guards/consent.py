"""Consent at send time: the latest ledger row per (contact, channel, purpose), read in one
query for a whole batch — never a value cached from enrollment time.

A tick runs at a logical time (`--now`, a flow run's scheduled start) that may lie before the
wall clock. A grant is in force from its recorded time only; a revocation is in force from
its recorded time *or earlier*: a message handed over today must never reach someone who
revoked before it left, whatever the tick's logical clock says."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Optional

from sqlalchemy import select

from nurture.runtime.sql import ids_in
from sqlalchemy.engine import Connection

from nurture.store.models import Consent

consent_t = Consent.__table__


def current_consent(conn: Connection, contact_ids: Iterable[int], channel: str, purpose: str,
                    now: datetime, wall: Optional[datetime] = None) -> dict[int, tuple[str, Optional[datetime]]]:
    """contact id → (status, confirmed_at) of the latest row recorded at or before `now` —
    unless the latest row recorded up to the wall clock (`wall`, default: the real time) is a
    revocation, which then wins."""
    ids = list(contact_ids)
    wall = wall or datetime.now(timezone.utc)
    until = max(now, wall)
    latest: dict[int, tuple[str, Optional[datetime]]] = {}
    later: dict[int, str] = {}
    for chunk_start in range(0, len(ids), 5000):
        chunk = ids[chunk_start:chunk_start + 5000]
        rows = conn.execute(
            select(consent_t.c.contact_id, consent_t.c.status, consent_t.c.confirmed_at, consent_t.c.recorded_at)
            .where(ids_in(consent_t.c.contact_id, chunk), consent_t.c.channel == channel,
                   consent_t.c.purpose == purpose, consent_t.c.recorded_at <= until)
            .order_by(consent_t.c.contact_id, consent_t.c.recorded_at, consent_t.c.id))
        for contact_id, status, confirmed_at, recorded_at in rows:
            if _utc(recorded_at) <= now:
                latest[contact_id] = (status, confirmed_at)
            else:
                later[contact_id] = status
    for contact_id, status in later.items():
        if status == "revoked":
            latest[contact_id] = ("revoked", None)
    return latest


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def consent_refusal(state: Optional[tuple[str, Optional[datetime]]], purpose: str,
                    double_opt_in: bool) -> Optional[str]:
    """The reason code a send is refused for, or None when consent allows it."""
    if purpose == "transactional":
        return "consent_revoked" if state and state[0] == "revoked" else None
    if state is None:
        return "no_consent"
    status, confirmed_at = state
    if status == "revoked":
        return "consent_revoked"
    if status == "pending":
        return "consent_pending"
    if double_opt_in and confirmed_at is None:
        return "not_double_opted_in"
    return None
