"""The message log: every outcome of every send step, newest first."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import func, select

from nurture.conditions import contact_t
from nurture.store.db import Store
from nurture.store.models import Message

message_t = Message.__table__


def message_log(store: Store, journey: Optional[str] = None, limit: Optional[int] = None) -> list[dict]:
    stmt = (select(message_t.c.id, contact_t.c.email, message_t.c.journey, message_t.c.step_id, message_t.c.channel,
                   message_t.c.status, message_t.c.reason, message_t.c.due_at, message_t.c.sent_at,
                   message_t.c.subject, message_t.c.address)
            .select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id))
            .order_by(message_t.c.id))
    if journey:
        stmt = stmt.where(message_t.c.journey == journey)
    if limit:
        stmt = stmt.limit(limit)
    with store.reading() as conn:
        rows = conn.execute(stmt).all()
    return [{"id": r.id, "contact": r.email, "journey": r.journey, "step": r.step_id, "channel": r.channel,
             "status": r.status, "reason": r.reason,
             "due_at": r.due_at.isoformat() if r.due_at else None,
             "sent_at": r.sent_at.isoformat() if r.sent_at else None,
             "to": r.address, "subject": r.subject} for r in rows]


def requeue_failed(store: Store, reason: str, now: datetime, journey: Optional[str] = None,
                   dry_run: bool = False) -> int:
    """Put `failed` messages whose reason starts with `reason` back in the queue, due `now`
    (an operator's decision after checking the provider: e.g. `delivery_unknown` messages the
    provider never received). They meet every send check again when claimed. The count."""
    filters = [message_t.c.status == "failed", message_t.c.reason.startswith(reason, autoescape=True)]
    if journey:
        filters.append(message_t.c.journey == journey)
    with store.engine.begin() as conn:
        if dry_run:
            return conn.execute(select(func.count()).select_from(message_t).where(*filters)).scalar_one()
        return conn.execute(message_t.update().where(*filters).values(
            status="queued", reason="requeued_by_operator", due_at=now, claim=None)).rowcount
