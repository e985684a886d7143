"""The message log: every outcome of every send step, newest first."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Optional

from sqlalchemy import func, select
from sqlalchemy.sql.functions import coalesce

from nurture.spec.models import Step
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import contact_t, message_t


def split_arms(steps: Iterable[Step], arm: Optional[str] = None, out: Optional[dict] = None) -> dict[str, str]:
    """step id → name of the innermost `split` arm it belongs to (steps outside a split: absent)."""
    out = {} if out is None else out
    for step in steps:
        if arm is not None:
            out[step.id] = arm
        for branch in (step.branch.then, step.branch.else_) if step.branch else ():
            split_arms(branch, arm, out)
        for branch in (step.wait_for.then, step.wait_for.timeout) if step.wait_for else ():
            split_arms(branch, arm, out)
        for split_arm in step.split or ():
            split_arms(split_arm.steps, split_arm.name, out)
    return out


def message_log(store: Store, journey: Optional[str] = None, limit: Optional[int] = None,
                project: Optional[ProjectSpec] = None, from_email: str = "hello@example.com") -> list[dict]:
    """Every message row with what an operator checks duplicates and deliveries by: its id,
    enrollment, attempts, the provider's id and the RFC 5322 Message-ID it was sent with, the
    subject and, with the project at hand, the A/B arm of the step. `contact` is the contact's
    e-mail, else its phone, else its external id (nurture.identities). `channel` is the channel
    used; for a send with `channels:`, `passed_over` says why the ones before it were not."""
    stmt = (select(message_t.c.id, coalesce(contact_t.c.email, contact_t.c.phone, contact_t.c.external_id).label("who"),
                   message_t.c.journey, message_t.c.step_id, message_t.c.channel,
                   message_t.c.status, message_t.c.reason, message_t.c.due_at, message_t.c.sent_at,
                   message_t.c.subject, message_t.c.address, message_t.c.enrollment_id, message_t.c.attempts,
                   message_t.c.attempt_key, message_t.c.provider_id, message_t.c.purpose, message_t.c.passed_over)
            .select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id))
            .order_by(message_t.c.id))
    if journey:
        stmt = stmt.where(message_t.c.journey == journey)
    if limit:
        stmt = stmt.limit(limit)
    with store.reading() as conn:
        rows = conn.execute(stmt).all()
    arms = {name: split_arms(spec.steps) for name, spec in (project.journeys.items() if project else ())}
    from nurture.rendering.email_message import rfc_message_id
    return [{"id": r.id, "contact": r.who, "journey": r.journey, "step": r.step_id, "channel": r.channel,
             "status": r.status, "reason": r.reason,
             "due_at": r.due_at.isoformat() if r.due_at else None,
             "sent_at": r.sent_at.isoformat() if r.sent_at else None,
             "to": r.address, "subject": r.subject, "enrollment_id": r.enrollment_id, "attempts": r.attempts,
             "attempt_key": r.attempt_key, "purpose": r.purpose, "provider_id": r.provider_id,
             "message_id": rfc_message_id(r.id, r.journey, from_email) if r.channel == "email" else None,
             "arm": arms.get(r.journey, {}).get(r.step_id), "passed_over": r.passed_over} for r in rows]


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
