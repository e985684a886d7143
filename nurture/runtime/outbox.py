"""The guarded outbox: for a batch of enrollments whose `send` step is due, the five checks of
the send pipeline and the outbox insert, in one transaction.

Order (DESIGN): consent → suppression → reachability → quiet hours → frequency cap. Every
check reads the database *now*, never a value cached at enrollment. Serialization per
contact: on PostgreSQL the batch's contact rows are locked (`FOR UPDATE`, in id order, so two
workers cannot deadlock) before the cap history is read; SQLite's `BEGIN IMMEDIATE` already
makes the whole transaction exclusive. Either way two ticks at once cannot both pass a cap,
and the unique (enrollment, step, attempt) key makes a double insert impossible anyway.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any, NamedTuple, Optional

from sqlalchemy import bindparam, select

from nurture.compiler import Node, Plan
from nurture.conditions import contact_t, enrollment_t
from nurture.guards.consent import consent_refusal, current_consent
from nurture.guards.frequency_cap import cap_blocks_until
from nurture.guards.quiet_hours import next_allowed_send, zone
from nurture.guards.reachability import unreachable_reason
from nurture.guards.suppression import suppression_reason, suppressions_for
from nurture.runtime.context import Runtime
from nurture.runtime.sql import ids_in, chunks, insert_ignore, write_many
from nurture.store.models import Message

message_t = Message.__table__
COUNTING = ("queued", "sending", "sent")
# Contact attribute listing the topics (journey `topic:`) a contact opted out of in the
# preference center; marketing sends of those journeys are suppressed.
TOPICS_OPTED_OUT = "topics_opted_out"

_defer = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
          .values(next_due_at=bindparam("due"), defer_count=bindparam("defers")))


class _Due(NamedTuple):
    id: int
    contact_id: int
    next_due_at: datetime
    holdout: bool
    defer_count: int
    email: Optional[str]
    phone: Optional[str]
    timezone: Optional[str]
    attributes: Optional[dict]


def cap_history(conn: Any, contact_ids: list[int], since: datetime) -> dict[int, list[tuple[str, datetime]]]:
    history: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    for part in chunks(contact_ids):
        for contact_id, channel, counted_at in conn.execute(
                select(message_t.c.contact_id, message_t.c.channel, message_t.c.counted_at)
                .where(ids_in(message_t.c.contact_id, part), message_t.c.counted_at > since,
                       message_t.c.status.in_(COUNTING), message_t.c.purpose == "marketing")):
            history[contact_id].append((channel, counted_at))
    return history


def lock_contacts(conn: Any, contact_ids: list[int]) -> None:
    if conn.dialect.name != "postgresql":
        return
    for part in chunks(sorted(set(contact_ids))):
        conn.execute(select(contact_t.c.id).where(ids_in(contact_t.c.id, part)).order_by(contact_t.c.id)
                     .with_for_update()).all()


def guard_and_queue(conn: Any, rt: Runtime, plan: Plan, node: Node, enrollment_ids: list[int],
                    now: datetime, report: Counter) -> None:
    send = node.step.send
    channel, purpose = send.channel, send.purpose
    policies = rt.project.policies
    rows = conn.execute(
        select(enrollment_t.c.id, enrollment_t.c.contact_id, enrollment_t.c.next_due_at, enrollment_t.c.holdout,
               enrollment_t.c.defer_count, contact_t.c.email, contact_t.c.phone, contact_t.c.timezone,
               contact_t.c.attributes)
        .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
        .where(ids_in(enrollment_t.c.id, enrollment_ids))).all()
    rows = [_Due._make(r) for r in rows]  # SQLAlchemy Row attributes cost ~1 µs each
    contact_ids = [r.contact_id for r in rows]
    lock_contacts(conn, contact_ids)

    marketing = purpose == "marketing"
    consents = current_consent(conn, contact_ids, channel, purpose, now)
    addresses = [(r.email if channel == "email" else r.phone) or "" for r in rows]
    by_contact, by_address = suppressions_for(conn, contact_ids, addresses)
    caps = rt.caps(plan) if marketing else []
    longest = max((c.per for c in caps), default=None)
    history = cap_history(conn, contact_ids, now - longest) if longest else {}
    window = rt.quiet_window(plan, channel) if marketing else None
    double_opt_in = policies.needs_double_opt_in(channel, purpose)

    allowed_by_zone: dict[Optional[str], datetime] = {}
    final: list[dict] = []
    deferred: list[dict] = []
    moves: list[tuple[int, int, Optional[str], datetime]] = []
    deferrals: list[dict] = []
    for r in rows:
        address = r.email if channel == "email" else r.phone
        status, reason, due = "queued", None, r.next_due_at
        if r.holdout:
            status, reason = "holdout", "holdout"
        else:
            refusal = consent_refusal(consents.get(r.contact_id), purpose, double_opt_in)
            if refusal:
                status, reason = "suppressed", refusal
            else:
                entries = by_contact.get(r.contact_id, []) + by_address.get((address or "").lower(), [])
                reason = suppression_reason(entries, channel, purpose) if entries else None
                if not reason and marketing and plan.journey.topic and \
                        plan.journey.topic in ((r.attributes or {}).get(TOPICS_OPTED_OUT) or ()):
                    reason = "topic_opt_out"
                if reason:
                    status = "suppressed"
                else:
                    reason = unreachable_reason(channel, r.email, r.phone)
                    if reason:
                        status = "skipped"
        if status == "queued" and window is not None:
            allowed = allowed_by_zone.get(r.timezone)
            if allowed is None:  # the same for everyone in a time zone: once per zone and batch
                allowed = allowed_by_zone[r.timezone] = next_allowed_send(now, zone(r.timezone, policies.timezone), window)
            if allowed > now:
                status, reason, due = "deferred", "quiet_hours", allowed
        if status == "queued" and caps:
            blocked = cap_blocks_until(history.get(r.contact_id, ()), channel, now, caps)
            if blocked is not None:
                if policies.on_cap == "skip":
                    status, reason = "skipped", "frequency_cap"
                else:
                    status, reason, due = "deferred", "frequency_cap", blocked
        if status == "queued":
            history.setdefault(r.contact_id, []).append((channel, now))
            reason = None
        report[(node.id, status, reason)] += 1
        row = dict(enrollment_id=r.id, contact_id=r.contact_id, journey=plan.name, step_id=node.id,
                   channel=channel, purpose=purpose, template=send.template, address=address,
                   status=status, reason=reason, due_at=due, created_at=now, attempts=0,
                   counted_at=now if status == "queued" and marketing else None,
                   attempt_key=f"defer:{r.defer_count + 1}" if status == "deferred" else "send")
        if status == "deferred":
            deferred.append(row)
            deferrals.append({"eid": r.id, "due": due, "defers": r.defer_count + 1})
        else:
            final.append(row)
            # The journey goes on from the moment the message went out (or was refused).
            moves.append((r.id, r.contact_id, r.timezone, max(now, r.next_due_at)))
    insert_ignore(conn, message_t, final + deferred, ("enrollment_id", "step_id", "attempt_key"))
    write_many(conn, _defer, deferrals)
    from nurture.runtime.advance import move
    move(conn, rt, plan, moves, node.next, now)
