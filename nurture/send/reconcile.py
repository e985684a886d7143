"""Reconciling rows a crashed worker left `sending`.

Delivery marks a row `sending` and commits *before* calling the channel, and `sent` after
(nurture.send.deliver). A crash in between leaves it `sending`: it is never picked up as
`queued` again. Once it has been `sending` for STUCK_AFTER, `reconcile_stuck` asks the channel
whether it was delivered (the file channels know exactly) and records `sent`, re-queues it
only if the channel is sure it was not delivered, or records `failed` / `delivery_unknown`.
Delivery is therefore at most once per (enrollment, step).

A message whose run is still alive is not stuck, however long it has been `sending`: its run
holds a lease on its claim token (nurture.send.lease), and reconcile leaves it to that run —
a slow channel or a large tick's queue of handed chunks no longer gets a message re-queued and
sent by another tick while its own run is about to send it.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Mapping

from sqlalchemy import and_, bindparam, or_, select

from nurture.redaction import redact, secrets_in
from nurture.rendering.email_message import rfc_message_id
from nurture.runtime.context import Runtime
from nurture.runtime.sql import for_update, prebuilt, texts_in
from nurture.send.lease import forget_dead, held_tokens
from nurture.store.models import FAILED, QUEUED, SENDING, SENT
from nurture.store.tables import message_t

log = logging.getLogger("nurture.deliver")
STUCK_AFTER = timedelta(minutes=15)


_IS_STUCK = (message_t.c.status == SENDING,
             or_(message_t.c.claimed_at <= bindparam("before"),
                 and_(message_t.c.claimed_at.is_(None),  # claimed before migration 0004
                      message_t.c.created_at <= bindparam("before"))))
_CLAIMS = select(message_t.c.claim).where(*_IS_STUCK).distinct()
# The rows of runs found dead, and rows claimed before claims had tokens (0004).
_OF_THE_DEAD = (select(message_t.c.id, message_t.c.journey, message_t.c.channel, message_t.c.claim)
                .where(*_IS_STUCK, or_(message_t.c.claim.is_(None), texts_in(message_t.c.claim, ()))))


# A verdict of reconcile_stuck (the status it recorded) as operators read it.
_VERDICT_WORDS = ((SENT, "sent"), (QUEUED, "queued again"), (FAILED, "failed (delivery_unknown)"))


def reconciled_text(counts: Mapping[str, int]) -> str:
    """`reconciled after a crash: 688 sent, 3,780 queued again` — what `reconcile_stuck`
    recorded (its counts by status), for a tick's output and artifact; '' when nothing."""
    parts = [f"{counts[status]:,} {words}" for status, words in _VERDICT_WORDS if counts.get(status)]
    return f"reconciled after a crash: {', '.join(parts)}" if parts else ""


def reconcile_stuck(rt: Runtime, now: datetime) -> Counter:
    """Rows left `sending` by a crashed worker: ask the channel what really happened."""
    report: Counter = Counter()
    before = now - STUCK_AFTER
    # A read first: on nearly every tick nothing is stuck, and what is may belong to runs still
    # alive (a slow channel, a large tick's queued chunks): their rows are not locked at all —
    # locking them while the channels below are asked would hold up their own run's record.
    with rt.store.reading() as conn:
        claims = [claim for claim, in conn.execute(_CLAIMS, {"before": before})]
        if not claims:
            return report
        held = held_tokens(conn, claims)
    dead = sorted(claim for claim in claims if claim and claim not in held)
    if held:
        log.info("`sending` messages of %d delivery run(s) still alive are left to them", len(held))
    if not dead and None not in claims:
        return report
    with rt.store.engine.begin() as conn:
        # Locked as they are read, skipping rows another worker is reconciling (PostgreSQL):
        # otherwise a second worker could apply its verdict after the
        # first had re-queued the message and a delivery had claimed it again — and re-queue a
        # message being sent.
        locking = prebuilt(("reconcile.stuck", conn.dialect.name),
                           lambda: for_update(_OF_THE_DEAD, conn, skip_locked=True, of=message_t))
        stuck = conn.execute(locking, {"before": before, "texts_claim": dead}).all()
        if not stuck:
            return report
        forget_dead(conn, {claim for *_, claim in stuck if claim})
        from_email = rt.settings.from_email
        for mid, journey, channel, _claim in stuck:
            try:
                verdict = rt.channel(channel).was_delivered(mid, rfc_message_id(mid, journey, from_email))
            except Exception as exc:  # the channel cannot be asked now: ask again on a later tick
                log.warning("cannot reconcile message %s on channel %s yet: %s", mid, channel,
                            redact(str(exc), secrets_in(rt.env)))
                continue
            if verdict is True:
                values = dict(status=SENT, reason="reconciled", sent_at=now, claim=None)
            elif verdict is False:
                values = dict(status=QUEUED, reason="requeued_after_crash", claim=None)
            else:
                values = dict(status=FAILED, reason="delivery_unknown", claim=None)
            conn.execute(message_t.update().where(message_t.c.id == mid, message_t.c.status == SENDING).values(**values))
            report[values["status"]] += 1
    return report
