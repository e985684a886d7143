"""The one send transaction: for the next batch of enrollments whose `send` step is due, the
five checks of the send pipeline, the outbox insert and the move to the next step, in one
transaction opened here.

The checks themselves are nurture.send.guards.pipeline (the same ones every later delivery
attempt meets again in nurture.send.deliver's claim). Serialization per contact: on
PostgreSQL the batch's contact rows are locked (`FOR UPDATE`, in id order, so two workers
cannot deadlock) before the cap history is read; SQLite's `BEGIN IMMEDIATE` already makes the
whole transaction exclusive. Either way two ticks at once cannot both pass a cap, and the
unique (enrollment, step, attempt) key makes a double insert impossible anyway.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple, Optional

from sqlalchemy import bindparam, select

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.runtime.sql import ids_in, insert_ignore, keyed_batch, write_many
from nurture.send.deliver import LoadedMessage
from nurture.send.guards.pipeline import Recipient, Verdict, address_of, check_batch, lock_contacts
from nurture.steps.transitions import Row, claim_due, move, step_batch
from nurture.store.models import DEFERRED, HOLDOUT, QUEUED, SENDING
from nurture.store.tables import contact_t, enrollment_t, event_t, message_t


_defer = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
          .values(next_due_at=bindparam("due"), defer_count=bindparam("defers")))


# What the checks read of each due enrollment, in the statement that takes the batch
# (nurture.steps.transitions.claim_due: locked, oldest due first).
_DUE_COLUMNS = (enrollment_t.c.id, enrollment_t.c.contact_id, enrollment_t.c.next_due_at, enrollment_t.c.holdout,
                enrollment_t.c.defer_count, contact_t.c.email, contact_t.c.phone, contact_t.c.timezone,
                contact_t.c.attributes)
_DUE_SOURCE = enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id)
# With a hand-off (nurture.send.handoff), what rendering needs too, so that the delivery
# processes need not read the messages again: the contact's other columns, the trigger event.
_HANDED_COLUMNS = (*_DUE_COLUMNS, contact_t.c.first_name, contact_t.c.last_name, contact_t.c.country,
                   contact_t.c.locale, contact_t.c.lifecycle_stage, contact_t.c.score,
                   event_t.c.name, event_t.c.properties, event_t.c.occurred_at)
_HANDED_SOURCE = _DUE_SOURCE.outerjoin(event_t, event_t.c.id == enrollment_t.c.trigger_event_pk)
# The ids of the messages the batch's insert claimed (a message of the same key that existed
# before was skipped by the insert and keeps its own state: it is not handed over).
_CLAIMED = (select(message_t.c.enrollment_id, message_t.c.id)
            .where(ids_in(message_t.c.enrollment_id, ()), message_t.c.step_id == bindparam("step"),
                   message_t.c.attempt_key == "send", message_t.c.claim == bindparam("token")))


_enrollment_id = itemgetter(0)


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


def queue_due(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    """The send transaction for the next batch of enrollments due at send step `node`: each
    gets its outcome (queued for delivery, or holdout / suppressed / skipped / deferred with a
    reason) as a `message` row, counted in `report`, and moves on — except a deferred one,
    which stays at the step until its new due time. False when none was due."""
    with step_batch(rt) as conn:
        keyed_batch(conn)
        if rt.handoff is None:
            found = claim_due(conn, plan, node, now, rt.batch_size, "send_due", _DUE_COLUMNS, _DUE_SOURCE)
        else:
            found = claim_due(conn, plan, node, now, rt.batch_size, "send_due_handed", _HANDED_COLUMNS,
                              _HANDED_SOURCE)
        if not found:
            return False
        # In id order, as the batch was read before it was taken and read in one statement
        # (it comes oldest due first): the checks meet a contact's enrollments, and the outbox
        # rows get their ids, in the order they always did.
        found.sort(key=_enrollment_id)
        handed = _guard_and_queue(conn, rt, plan, node, found, now, report)
    if handed:  # committed: the tick's delivery processes may take them (nurture.send.handoff)
        rt.handoff.publish(plan.name, node.id, handed)
    return True


def _guard_and_queue(conn: Any, rt: Runtime, plan: Plan, node: Node, found: list[Any],
                     now: datetime, report: Counter) -> list[LoadedMessage]:
    """The checks, the outbox rows and the moves of one batch (`found`: its enrollments as
    `_DUE_COLUMNS`, or `_HANDED_COLUMNS` with a hand-off). With a pipelined tick's
    `rt.handoff`, the messages that may go are inserted claimed (`sending`, its token, as a
    claim would mark them) and returned as delivery loads them, for the hand-off."""
    send = node.step.send
    handoff = rt.handoff
    purpose = send.purpose
    rows = [_Due._make(r[:9]) for r in found]  # SQLAlchemy Row attributes cost ~1 µs each
    lock_contacts(conn, [r.contact_id for r in rows])
    recipients = [Recipient(r.contact_id, r.email, r.phone, r.timezone, r.attributes, r.holdout) for r in rows]
    choices = _choose_channels(conn, rt, plan, node, recipients, now)
    final: list[dict] = []
    deferred: list[dict] = []
    moves: list[Row] = []
    deferrals: list[dict] = []
    claimed: dict[int, tuple] = {}  # enrollment id → (its _HANDED_COLUMNS row, its message row) when claimed
    marketing = purpose == "marketing"
    for i, (r, (channel, (status, reason, due), passed_over)) in enumerate(zip(rows, choices)):
        due = due or r.next_due_at
        report[(node.id, status, reason)] += 1
        row = dict(enrollment_id=r.id, contact_id=r.contact_id, journey=plan.name, step_id=node.id,
                   channel=channel, purpose=purpose, template=send.template,
                   address=address_of(channel, r.email, r.phone),
                   status=status, reason=reason, due_at=due, created_at=now, attempts=0,
                   counted_at=now if status == QUEUED and marketing else None,
                   attempt_key=f"defer:{r.defer_count + 1}" if status == DEFERRED else "send",
                   passed_over=passed_over)
        if handoff is not None:  # every row of an executemany has the same keys
            row.update(claim=None, claimed_at=None)
            if status == QUEUED:
                row.update(status=SENDING, claim=handoff.token, claimed_at=now, attempts=1)
                claimed[r.id] = (found[i], row)
        if status == DEFERRED:
            deferred.append(row)
            deferrals.append({"eid": r.id, "due": due, "defers": r.defer_count + 1})
        else:
            final.append(row)
            # The journey goes on from the moment the message went out (or was refused).
            moves.append((r.id, r.contact_id, r.timezone, max(now, r.next_due_at)))
    if claimed and handoff.lease is not None:  # held from the transaction that claims with its token
        handoff.lease.take(conn)
    inserted = insert_ignore(conn, message_t, final + deferred, ("enrollment_id", "step_id", "attempt_key"),
                             returning=("enrollment_id", "id") if claimed else ())
    write_many(conn, _defer, deferrals)
    move(conn, rt, plan, moves, node.next, now)
    return _handed(conn, claimed, node.id, handoff.token, inserted) if claimed else []


def _handed(conn: Any, claimed: dict[int, tuple], step_id: str, token: str,
            inserted: Optional[list[tuple]]) -> list[LoadedMessage]:
    """The claimed messages as delivery's load reads them (nurture.send.deliver.LoadedMessage).
    `inserted`: (enrollment id, message id) of the rows the insert returned (PostgreSQL), or
    None — then they are read back by key and token."""
    if inserted is None:
        pairs = conn.execute(_CLAIMED, {"ids_enrollment_id": list(claimed), "step": step_id, "token": token}).all()
    else:  # what the insert skipped (a message of the same key existed) is not among them
        pairs = [(enrollment_id, message_id) for enrollment_id, message_id in inserted if enrollment_id in claimed]
    out = []
    for enrollment_id, message_id in pairs:
        due, row = claimed[enrollment_id]  # (unpacked in _HANDED_COLUMNS' order)
        (_, contact_id, _, _, _, email, phone, timezone, attributes,
         first_name, last_name, country, locale, lifecycle_stage, score, event_name, event_properties, event_at) = due
        out.append(LoadedMessage(message_id, row["journey"], step_id, row["channel"], row["purpose"], row["template"],
                                 row["address"], row["created_at"], row["attempts"], contact_id, email, phone,
                                 first_name, last_name, country, locale, timezone, lifecycle_stage, score,
                                 attributes, event_name, event_properties, event_at))
    return out


def _choose_channels(conn: Any, rt: Runtime, plan: Plan, node: Node, recipients: list[Recipient],
                     now: datetime) -> list[tuple[str, Verdict, Optional[str]]]:
    """Per recipient: the channel, the verdict and (channel fallback) why the channels before
    it were passed over. A single channel is checked once. With `channels: [whatsapp, sms,
    email]` the first channel whose checks pass wins; a recipient no channel may reach now
    waits for the earliest deferral among them (quiet hours, a cap) and is decided again, over
    every channel, when it falls due; none deferred: the first channel's refusal stands. Holdout
    is decided on the first channel (it does not depend on one). Messages queued on an earlier
    channel count against the caps of the later ones in the same transaction."""
    send = node.step.send
    options = send.options
    if len(options) == 1:
        rules = rt.send_rules(plan, options[0], send.purpose, node.id)
        return [(options[0], v, None) for v in check_batch(conn, rules, recipients, now)]
    chosen: dict[int, tuple[str, Verdict]] = {}
    tried: dict[int, list[tuple[str, Verdict]]] = {i: [] for i in range(len(recipients))}
    pending: dict[int, list] = {}
    remaining = list(range(len(recipients)))
    for channel in options:
        if not remaining:
            break
        rules = rt.send_rules(plan, channel, send.purpose, node.id)
        verdicts = check_batch(conn, rules, [recipients[i] for i in remaining], now, pending=pending)
        still = []
        for i, verdict in zip(remaining, verdicts):
            if verdict.status in (QUEUED, HOLDOUT):
                chosen[i] = (channel, verdict)
            else:
                tried[i].append((channel, verdict))
                still.append(i)
        remaining = still
    for i in remaining:
        waits = [(channel, v) for channel, v in tried[i] if v.status == DEFERRED]
        chosen[i] = min(waits, key=lambda cv: cv[1].due) if waits else tried[i][0]
    out = []
    for i in range(len(recipients)):
        channel, verdict = chosen[i]
        others = [f"{c}: {v.reason}" for c, v in tried[i] if c != channel]
        out.append((channel, verdict, "; ".join(others) or None))
    return out
