"""Delivery: queued outbox rows are claimed in batches, rendered (nurture.send.render) and
handed to their channel; each result is recorded on its row.

Every delivery attempt — the first or a retry — passes the send checks again when it is
claimed, in the claiming transaction (nurture.send.guards.pipeline, the same checks, outcomes
and reasons as the first send): a message queued yesterday whose recipient revoked consent,
was suppressed, or is now inside quiet hours or over a cap is recorded `suppressed` /
`skipped`, or stays queued until its window opens (reason `quiet_hours` / `frequency_cap`),
and is not handed to the channel.

A channel that cannot be used at all (`unavailable`: authentication refused, server
unreachable, not configured, or a real channel without a proper NURTURE_SECRET_KEY and
NURTURE_PUBLIC_URL) leaves its messages queued without counting an attempt; the tick stops
delivering on that channel and reports it once.

Crash safety (the guarantee stated in the README): a row is marked `sending` and committed
*before* the channel is called, and marked `sent` after. A crash in between leaves it
`sending`; it is never picked up as `queued` again, and nurture.send.reconcile settles it
later. Delivery is therefore at most once per (enrollment, step).
"""
from __future__ import annotations

import logging
import uuid
from collections import Counter, namedtuple
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator, Optional

from sqlalchemy import and_, bindparam, case, or_, select

from nurture.redaction import redact, secrets_in
from nurture.registry import DeliveryResult, OutgoingMessage
from nurture.rendering.templates import RenderError
from nurture.runtime.context import Runtime
from nurture.runtime.gc_pause import gc_paused
from nurture.runtime.sql import chunks, ids_in, prebuilt, write_many
from nurture.send.guards.pipeline import Recipient, address_of, check_batch, lock_contacts
from nurture.send.guards.whatsapp import whatsapp_sessions
from nurture.send.handoff import HandedBatch
from nurture.send.lease import Lease, Renewed
from nurture.send.render import StepRemoved, render_message
from nurture.send.system_mail import SYSTEM_JOURNEYS, outdated_requests, request_rules
from nurture.store.models import DEFERRED, FAILED, QUEUED, SENDING, SENT, SKIPPED, SUPPRESSED
from nurture.store.tables import contact_t, enrollment_t, event_t, message_t, suppression_t
from nurture.store.write_turns import current_turns, taking_turns

log = logging.getLogger("nurture.deliver")
MAX_ATTEMPTS = 5

# A result is recorded only on a message its run still holds (`claim`: the run's token): one
# reconcile settled after the run's lease lapsed (nurture.send.lease) keeps that verdict.
_MINE = (message_t.c.id == bindparam("mid"), message_t.c.claim == bindparam("tok"))
_record = (message_t.update().where(*_MINE)
           .values(status=bindparam("st"), reason=bindparam("rs"), sent_at=bindparam("sat"),
                   provider_id=bindparam("pid"), subject=bindparam("subj"), claim=None))
_requeue = _record.values(due_at=bindparam("due"))  # a retry: back to `queued`, due after its backoff
# The channel could not be used: back to `queued` as it was, the attempt not counted.
_put_back = (message_t.update().where(*_MINE)
             .values(status=QUEUED, reason=bindparam("rs"), claim=None, attempts=message_t.c.attempts - 1))


_CLAIM_COLUMNS = (message_t.c.id, message_t.c.journey, message_t.c.step_id, message_t.c.channel,
                  message_t.c.purpose, message_t.c.address, message_t.c.contact_id, contact_t.c.email,
                  contact_t.c.phone, contact_t.c.timezone, message_t.c.attempts, message_t.c.created_at,
                  message_t.c.claimed_at)
Candidate = namedtuple("Candidate", [c.name for c in _CLAIM_COLUMNS])  # type: ignore[misc]
# A re-checked message that may not go now: its final status, or (still queued) a later due time.
_refuse = (message_t.update().where(message_t.c.id == bindparam("mid"))
           .values(status=bindparam("st"), reason=bindparam("rs"), due_at=bindparam("due"), claim=None))
# The claim: `sending`, with a claim token, counted against caps from now (marketing).
_TAKE = (message_t.update().where(ids_in(message_t.c.id, ()))
         .values(status=SENDING, claim=bindparam("token"), claimed_at=bindparam("now"),
                 attempts=message_t.c.attempts + 1,
                 counted_at=case((message_t.c.purpose == "marketing", bindparam("now")), else_=message_t.c.counted_at)))
_readdress = message_t.update().where(message_t.c.id == bindparam("mid")).values(address=bindparam("addr"))


_DUE_ANY = select(message_t.c.id).where(message_t.c.status == QUEUED, message_t.c.due_at <= bindparam("now")).limit(1)
_DUE_ANY_OF = (select(message_t.c.id).where(message_t.c.status == QUEUED, message_t.c.due_at <= bindparam("now"),
                                           message_t.c.journey == bindparam("journey")).limit(1))


def _anything_due(rt: Runtime, now: datetime, journey: Optional[str]) -> bool:
    """Is any message (of `journey`) queued and due? (Any partition: a superset of the claim's rows.)"""
    with rt.store.reading() as conn:
        return conn.execute(_DUE_ANY_OF if journey else _DUE_ANY, {"now": now, "journey": journey}).first() is not None


def _claim(rt: Runtime, now: datetime, journey: Optional[str], partition: int, partitions: int,
           report: Optional[Counter] = None, skip_channels: Iterable[str] = (),
           lease: Optional[Lease] = None) -> list[int]:
    counted: Counter = Counter()
    with rt.store.engine.begin() as conn:
        ids = _claim_in(conn, rt, now, journey, partition, partitions, counted, skip_channels, lease)
    if report is not None:  # (committed)
        report.update(counted)
    return ids


def _claim_in(conn: Any, rt: Runtime, now: datetime, journey: Optional[str], partition: int,
              partitions: int, report: Counter, skip_channels: Iterable[str] = (),
              lease: Optional[Lease] = None) -> list[int]:
    """Re-check the next due rows and mark the ones that may go `sending` (committed by the
    caller before any channel call) with the token of the run's `lease`, taken in the same
    transaction (none: a token of their own, unleased); their ids, in order. Rows refused by
    the checks are recorded here and counted in `report`."""
    skip = tuple(sorted(set(skip_channels)))
    postgres = conn.dialect.name == "postgresql"

    def build() -> Any:
        filters = [message_t.c.status == QUEUED, message_t.c.due_at <= bindparam("now")]
        if journey:
            filters.append(message_t.c.journey == bindparam("journey"))
        if partitions > 1:
            filters.append(message_t.c.id % bindparam("partitions") == bindparam("partition"))
        if skip:
            filters.append(message_t.c.channel.not_in(skip))
        # Oldest due first, read in order from ix_message_queue (status, due_at).
        stmt = (select(*_CLAIM_COLUMNS).select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id))
                .where(*filters).order_by(message_t.c.due_at).limit(bindparam("limit")))
        return stmt.with_for_update(of=message_t, skip_locked=True) if postgres else stmt
    due = prebuilt(("deliver.claim", bool(journey), partitions > 1, skip, postgres), build)
    params = {"now": now, "journey": journey, "partitions": partitions, "partition": partition,
              "limit": rt.batch_size}
    while True:
        rows = [Candidate._make(r) for r in conn.execute(due, params)]
        if not rows:
            return []
        passed = _recheck(conn, rt, rows, now, report)
        if passed:
            if lease is not None:
                lease.take(conn)
            conn.execute(_TAKE, {"ids_id": passed, "token": lease.token if lease else uuid.uuid4().hex, "now": now})
            return passed
        # Every row of this batch was refused or deferred (none is still due): the next ones.


def _attributes(conn: Any, contact_ids: list[int]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for part in chunks(sorted(set(contact_ids))):
        out.update(conn.execute(_ATTRIBUTES, {"ids_id": list(part)}).all())
    return out


_ATTRIBUTES = select(contact_t.c.id, contact_t.c.attributes).where(ids_in(contact_t.c.id, ()))


def _recheck(conn: Any, rt: Runtime, rows: list, now: datetime, report: Counter) -> list[int]:
    """Checks 1–5 again for claimed candidates, grouped by send step; the ids that pass.

    One kind of message is not re-read: one the advance stage of this very tick queued
    moments ago, at this same logical time, and nobody has claimed yet (`fresh`). Its checks
    ran in the advance stage's serialized send transaction at `now`; reading them again
    costs about 30 % of a pipelined tick's throughput (the claim holds SQLite's write lock) for a
    window of seconds. Everything else — a retry, a message a crash, an unavailable channel or
    an operator put back, a message left for a later tick — meets every check again here, in
    the claiming transaction."""
    groups: dict[tuple, list] = {}
    passed: list[int] = []
    fresh: list = []
    for r in rows:
        # (Nurture's own requests are queued without the checks — nurture.double_opt_in: they meet them here)
        if r.attempts == 0 and r.claimed_at is None and r.created_at == now and r.journey not in SYSTEM_JOURNEYS:
            passed.append(r.id)
            fresh.append(r)
            continue
        groups.setdefault((r.journey, r.step_id, r.channel, r.purpose), []).append(r)
    if not groups:  # (a tick's own messages only: nothing to check again, nothing to count)
        return sorted(passed)
    # What of this claim goes now, counted against the caps of the rest of it: every message of
    # the claim is left out of the stored history (`exclude_messages`: its own row must not cap
    # it), so without this two messages for one contact in one claim (two steps put back while a
    # channel was down, a retry pushed to the morning beside a fresh message) both passed a cap.
    going: dict[int, list[tuple[str, datetime]]] = {}
    for r in fresh:
        if r.purpose == "marketing":
            going.setdefault(r.contact_id, []).append((r.channel, now))
    lock_contacts(conn, [r.contact_id for members in groups.values() for r in members])
    batch_ids = frozenset(r.id for r in rows)
    refusals: list[dict] = []
    readdress: list[dict] = []
    left = _left_their_journey(conn, [r.id for (journey, _, _, purpose), members in groups.items()
                                      if purpose == "marketing" and journey not in SYSTEM_JOURNEYS for r in members])
    for (journey, step_id, channel, purpose), members in groups.items():
        gone = [r for r in members if r.id in left]
        if gone:
            for r in gone:
                report[(step_id, SKIPPED, left[r.id])] += 1
                refusals.append({"mid": r.id, "st": SKIPPED, "rs": left[r.id], "due": now})
            members = [r for r in members if r.id not in left]
            if not members:
                continue
        plan = rt.plan(journey) if journey in rt.project.journeys else None
        rules = request_rules(rt, channel) if journey in SYSTEM_JOURNEYS else rt.send_rules(plan, channel, purpose,
                                                                                             step_id)
        # Attributes only matter for a journey's topic opt-out: read them only then (decoding
        # every contact's JSON per claim costs more than the rest of the re-check).
        attributes = _attributes(conn, [r.contact_id for r in members]) if rules.topic and rules.marketing else {}
        verdicts = check_batch(conn, rules, [Recipient(r.contact_id, r.email, r.phone, r.timezone,
                                                       attributes.get(r.contact_id)) for r in members],
                               now, exclude_messages=batch_ids, pending=going)
        if journey in SYSTEM_JOURNEYS:  # a confirmation asks about one pending consent: is it still?
            outdated = outdated_requests(conn, [r.id for r in members], now)
            verdicts = [(SUPPRESSED, outdated[r.id], now) if r.id in outdated else verdict
                        for r, verdict in zip(members, verdicts)]
        for r, (status, reason, due) in zip(members, verdicts):
            if status == QUEUED:
                passed.append(r.id)
                current = address_of(channel, r.email, r.phone)
                if current and current != r.address:  # the contact's address changed since queueing
                    readdress.append({"mid": r.id, "addr": current})
                continue
            report[(step_id, status, reason)] += 1
            if status == DEFERRED:  # stays queued until the window opens
                refusals.append({"mid": r.id, "st": QUEUED, "rs": reason, "due": due})
            else:
                refusals.append({"mid": r.id, "st": status, "rs": reason, "due": now})
    write_many(conn, _refuse, refusals)
    write_many(conn, _readdress, readdress)
    return sorted(passed)


_LEFT = (select(message_t.c.id, enrollment_t.c.status)
         .join(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id)
         .where(ids_in(message_t.c.id, ()), enrollment_t.c.left_at >= message_t.c.created_at,
                or_(and_(enrollment_t.c.status == "exited", enrollment_t.c.exit_reason == "exit_when"),
                    enrollment_t.c.status == "converted")))


def _left_their_journey(conn: Any, ids: list[int]) -> dict[int, str]:
    """Of these marketing messages, those whose contact has left the journey since they were
    queued — exited by `exit_when` or converted (its goal) — and why. (The journey's own `exit`
    step, taken right after a send, and a merge are no reason: the message is the journey's.) A cart reminder deferred to
    the morning by quiet hours, or held back by a mail server that was down, must not reach
    someone who bought during the night: `exit_when` is checked before every step, and a
    message still waiting is that step, not yet taken."""
    out: dict[int, str] = {}
    for part in chunks(ids):
        out.update(conn.execute(_LEFT, {"ids_id": list(part)}).all())
    return out


_LOAD_COLUMNS = (
    message_t.c.id, message_t.c.journey, message_t.c.step_id, message_t.c.channel, message_t.c.purpose,
    message_t.c.template, message_t.c.address, message_t.c.created_at, message_t.c.attempts,
    message_t.c.contact_id, contact_t.c.email, contact_t.c.phone, contact_t.c.first_name, contact_t.c.last_name,
    contact_t.c.country, contact_t.c.locale, contact_t.c.timezone, contact_t.c.lifecycle_stage, contact_t.c.score,
    contact_t.c.attributes, event_t.c.name.label("event_name"), event_t.c.properties.label("event_properties"),
    event_t.c.occurred_at.label("event_at"))
# SQLAlchemy's Row resolves an attribute by name in ~1 µs; a batch reads ~30 per message.
LoadedMessage = namedtuple("LoadedMessage", [c.name for c in _LOAD_COLUMNS])  # type: ignore[misc]


_LOAD = (select(*_LOAD_COLUMNS)
         .select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id)
                      .outerjoin(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id)
                      .outerjoin(event_t, event_t.c.id == enrollment_t.c.trigger_event_pk))
         .where(ids_in(message_t.c.id, ())))


def load_messages(rt: Runtime, ids: list[int]) -> list[LoadedMessage]:
    """What rendering needs of claimed messages: the row, its contact, its trigger event."""
    rows: list[LoadedMessage] = []
    make = LoadedMessage._make
    with rt.store.reading() as conn:
        for part in chunks(ids):
            rows.extend(map(make, conn.execute(_LOAD, {"ids_id": list(part)})))
    return rows


class _Delivery:
    """What one delivery run keeps between its batches: the settings and secrets (read once,
    not per message), the prepared send steps, the channels found unusable, the outcomes
    (counted in `report` as each batch's record commits: a run that fails part-way still has
    what it did; given: the caller's)."""

    def __init__(self, rt: Runtime, now: datetime, lease: Optional[Lease | Renewed] = None,
                 report: Optional[Counter] = None):
        self.rt, self.now = rt, now
        self.lease = lease  # what holds the run's `sending` messages, where this process holds it
        self.report: Counter = Counter() if report is None else report
        self.settings = rt.settings
        self.secrets = secrets_in(rt.env)
        self.prepared: dict = {}
        self.down: dict[str, tuple[str, int]] = {}  # channels found unusable in this run: name → (reason, count)

    def send(self, rows: list) -> tuple[list[dict], list[dict], dict[int, Any]]:
        if self.lease is not None:
            self.lease.check()  # not renewed for too long: another tick may reconcile them soon
        with gc_paused():
            return _send_batch(self, rows)

    def record(self, conn: Any, token: str, updates: list[dict], suppressions: list[dict],
               meta: dict[int, Any], counted: Counter) -> None:
        """Record a batch's results, claimed with `token`, counted in `counted` (for `report`
        once the caller's transaction has committed). A message no longer claimed with it
        was settled by reconcile after this run's lease lapsed (the database out of its reach
        for LEASE_TTL while the channel had it): that record stands, and the run says so."""
        for u in updates:
            outcome = u.pop("outcome")
            u["tok"] = token
            if outcome != "unavailable":  # reported once per channel by `finish`
                counted[(meta[u["mid"]].step_id, outcome, u["rs"])] += 1
        written = (write_many(conn, _record, [u for u in updates if "due" not in u and "back" not in u])
                   + write_many(conn, _requeue, [u for u in updates if "due" in u])
                   + write_many(conn, _put_back, [u for u in updates if "back" in u]))
        if written < len(updates):
            log.error("%d message(s) of delivery run %s were settled by another run while their channel had "
                      "them (this run's lease had lapsed): they may have gone out twice; the other run's record "
                      "stands", len(updates) - written, token)
        if suppressions:
            conn.execute(suppression_t.insert(), suppressions)

    def finish(self) -> Counter:
        for channel, (reason, count) in self.down.items():
            if count:  # (0: found down by another process of the tick, nothing of this one's put back)
                self.report[(f"channel:{channel}", "unavailable", reason)] += count
        return self.report


def channels_down(outcomes: Counter) -> frozenset[str]:
    """The channels a delivery run of this tick found unusable, from its outcomes (reported
    once per channel as `channel:<name>`, `unavailable`)."""
    return frozenset(step[len("channel:"):] for step, outcome, _ in outcomes
                     if outcome == "unavailable" and step.startswith("channel:"))


def deliver(rt: Runtime, now: datetime, journey: Optional[str] = None, partition: int = 0,
            partitions: int = 1, skip_channels: Iterable[str] = (), report: Optional[Counter] = None) -> Counter:
    """Deliver every due queued message (of `journey`, of this `partition` of message ids):
    claim a batch, render and hand it over, record the results with the next claim; the
    outcomes as (step id, outcome, reason) → count, counted in `report` (given: the caller's,
    which holds what the committed batches did should a later one fail). `skip_channels`:
    channels an earlier delivery run of the same tick found unusable (a large tick's hand-off):
    their messages stay queued, the channel is not tried again this tick."""
    run = _Delivery(rt, now, report=report)
    if not _anything_due(rt, now, journey):  # a read, not the claim's write transaction, on a quiet tick
        return run.report
    skip = frozenset(skip_channels)
    with Lease(rt.store, uuid.uuid4().hex) as run.lease:  # the run's claims hold it (nurture.send.lease)
        ids = _claim(rt, now, journey, partition, partitions, run.report, skip, run.lease)
        while ids:
            outcome = run.send(load_messages(rt, ids))
            # The batch's outcomes and the next claim share one write transaction: one wait for
            # SQLite's write lock per batch, not two.
            counted: Counter = Counter()
            with gc_paused(), rt.store.engine.begin() as conn:
                run.record(conn, run.lease.token, *outcome, counted)
                ids = _claim_in(conn, rt, now, journey, partition, partitions, counted, skip | set(run.down),
                                run.lease)
                if not ids:
                    run.lease.release(conn)  # the run's last transaction
            run.report.update(counted)
    return run.finish()


def deliver_handed(rt: Runtime, now: datetime, batches: Iterable[HandedBatch], shared: Any = None) -> Counter:
    """Deliver the chunks a pipelined tick's advance stage handed over, claimed already and
    loaded (nurture.send.handoff); the outcomes as `deliver`'s. `shared`: the tick's Handoff,
    through which its processes tell each other the channels they found unusable and the tick
    process tells them its lease is renewed (nurture.send.lease)."""
    lease = Renewed(shared.renewed) if shared is not None else None
    with HandedDelivery(rt, now, lease, shared=shared) as delivery:
        for batch in batches:
            delivery.take(batch)
    return delivery.outcomes()


class HandedDelivery:
    """Delivers handed chunks (nurture.send.handoff) one at a time, as they are given.

    A chunk's results are recorded while the next chunk renders, by a thread of this process
    (at most one record waits): on SQLite its write transaction would otherwise queue behind
    the advance stage's send transaction, and on PostgreSQL the server writes it while this
    process renders. The thread starts with a tick's second chunk: a tick with one chunk —
    most ticks — records it in this thread when the block ends, and starts no thread. The
    messages are `sending` until recorded either way; nothing is handed to a channel twice.
    Leaving the `with` records the last chunk (also when the block is failing: its messages
    were handed to their channel), waits for the thread's record (its failure raised, unless
    the block is failing already: that error stands) and ends the thread; `outcomes` are
    then `deliver`'s. With `last` the run ends with it: that final record also releases the
    run's lease (nurture.send.lease), in the same transaction."""

    def __init__(self, rt: Runtime, now: datetime, lease: Optional[Lease | Renewed] = None, last: bool = False,
                 shared: Any = None):
        self.rt = rt
        self.run = _Delivery(rt, now, lease)
        self.last = last  # the run ends with this delivery: the final record releases the lease
        self.shared = shared  # a pipelined tick's Handoff: channels found down, told to its other processes
        self.turns = current_turns()
        self.held: Optional[tuple] = None  # the last chunk's claim token and results, not yet recorded
        self.pending: Optional[Future] = None  # the record of the chunk before, in the thread
        self.recorder: Optional[ThreadPoolExecutor] = None

    def _record(self, held: tuple, final: bool = False) -> None:
        token, outcome = held
        counted: Counter = Counter()
        with taking_turns(self.turns), gc_paused(), self.rt.store.engine.begin() as conn:
            self.run.record(conn, token, *outcome, counted)
            if final and self.last and self.run.lease is not None:
                self.run.lease.release(conn)
        self.run.report.update(counted)

    def take(self, batch: HandedBatch) -> None:
        if not batch.rows:
            return
        down = self.run.down
        if self.shared is not None:  # found down by another process of the tick: not tried here
            for name, reason in self.shared.down().items():
                down.setdefault(name, (reason, 0))
            known = len(down)
        if self.held is not None:  # the previous chunk is recorded while this one renders
            if self.recorder is None:
                self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nurture-record")
            self.pending, self.held = self.recorder.submit(self._record, self.held), None
        outcome = self.run.send([LoadedMessage._make(r) for r in batch.rows])
        if self.shared is not None and len(down) > known:
            self.shared.mark_down({name: reason for name, (reason, _) in down.items()})
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()  # (raises what the record raised)
        self.held = (batch.token, outcome)

    def __enter__(self) -> "HandedDelivery":
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            pending, self.pending = self.pending, None
            if pending is not None:
                if kind is None:
                    pending.result()
                else:
                    pending.exception()  # waited for; the block's own error is the one raised
            held, self.held = self.held, None
            if held is not None:
                try:
                    self._record(held, final=kind is None)
                except Exception:
                    if kind is None:
                        raise
                    log.exception("could not record a delivered chunk; its messages stay `sending` for reconcile")
        finally:
            if self.recorder is not None:
                self.recorder.shutdown(wait=True)

    def outcomes(self) -> Counter:
        return self.run.finish()


def _send_batch(run: _Delivery, rows: list) -> tuple[list[dict], list[dict], dict[int, Any]]:
    """Render and send one claimed batch: (row updates, suppressions, rows by id) to record.
    A channel found unusable is added to `run.down` (reason, messages left queued); the
    messages of a channel already down are put back without being rendered."""
    rt, now, settings, prepared, down, secrets = run.rt, run.now, run.settings, run.prepared, run.down, run.secrets
    updates: list[dict] = []
    suppressions: list[dict] = []
    by_channel: dict[str, list[OutgoingMessage]] = {}
    meta: dict[int, Any] = {}
    on_whatsapp = [row.contact_id for row in rows if row.channel == "whatsapp"]
    if on_whatsapp:  # free text inside the 24-hour session, the approved template outside it
        with rt.store.reading() as conn:
            sessions = whatsapp_sessions(conn, on_whatsapp, now)
    else:
        sessions = set()
    for row in rows:
        meta[row.id] = row
        if row.channel in down:
            reason, count = down[row.channel]
            down[row.channel] = (reason, count + 1)
            updates.append({"mid": row.id, "rs": reason, "back": True, "outcome": "unavailable"})
            continue
        try:
            by_channel.setdefault(row.channel, []).append(
                render_message(rt, row, settings, prepared, session_open=row.contact_id in sessions))
        except RenderError as exc:
            updates.append(_update(row, FAILED, redact(f"render_error: {exc}", secrets), None, None, now))
        except StepRemoved:  # the journey or step was removed from the project since queueing
            updates.append(_update(row, FAILED, f"step_removed: {row.journey}.{row.step_id} is no longer in the project",
                                   None, None, now))
    for channel, messages in by_channel.items():
        subjects = {m.message_pk: m.subject or None for m in messages}
        try:
            integration = rt.channel(channel)
        except Exception as exc:  # not configured, or refused to send: nothing was handed over
            integration = None
            reason = redact(f"channel_error: {exc}", secrets)
            results = [DeliveryResult(m.message_pk, "unavailable", reason=reason) for m in messages]
        else:
            try:
                results = integration.send_batch(messages)
            except Exception as exc:
                results = _after_channel_crash(integration, messages, exc)
        seen: set[int] = set()
        given = {m.message_pk for m in messages}
        for result in _with_forgotten(integration, messages, results):
            # A channel is a plug-in: a result for no message of this batch (or a second one)
            # is dropped, and only text is recorded — nothing it answers stops the record.
            if result.message_pk not in given or result.message_pk in seen:
                continue
            seen.add(result.message_pk)
            row = meta[result.message_pk]
            status = result.status
            reason = redact(result.reason if result.reason is None else str(result.reason), secrets)
            if status not in _RESULTS:  # at most once: what it may have done is not done again
                status, reason = FAILED, f"delivery_unknown: the channel answered {str(status)[:40]!r}"
            if status == "unavailable":
                updates.append({"mid": row.id, "rs": reason, "back": True, "outcome": "unavailable"})
                first_reason, count = down.get(channel, (reason, 0))
                if not count:
                    log.warning("channel %s unavailable, its messages stay queued: %s", channel, reason)
                down[channel] = (first_reason, count + 1)
                continue
            if status == "retry" and row.attempts >= MAX_ATTEMPTS:
                status = FAILED
            provider_id = result.provider_id if isinstance(result.provider_id, str) else None
            updates.append(_update(row, status, reason, provider_id, subjects.get(result.message_pk), now))
            if result.suppress:
                suppressions.append(dict(contact_id=row.contact_id, address=(row.address or "").lower() or None,
                                         channel=row.channel, reason=result.suppress, created_at=now))
    return updates, suppressions, meta


_RESULTS = frozenset({"sent", "retry", "failed", "unavailable"})  # registry.DeliveryResult's statuses


def _with_forgotten(integration: Any, messages: list, results: Any) -> Iterator[DeliveryResult]:
    """The channel's results, then a verdict for each message it gave none for: never silently
    dropped and — as after a crash — only sent again when the channel vouches it did not go."""
    answered = set()
    for result in results if isinstance(results, (list, tuple)) else ():
        if isinstance(result, DeliveryResult) and isinstance(result.message_pk, int):
            answered.add(result.message_pk)
            yield result
    forgotten = [m for m in messages if m.message_pk not in answered]
    if forgotten:
        yield from _ask_channel(integration, forgotten, "no_result_from_channel")


def _after_channel_crash(integration: Any, messages: list, exc: Exception) -> list[DeliveryResult]:
    """A channel raised half-way through a batch (a bug: results are the contract). Some
    messages may have gone out, so none is simply retried."""
    return _ask_channel(integration, messages, f"channel_error: {type(exc).__name__}: {exc}")


def _ask_channel(integration: Any, messages: list, reason: str) -> list[DeliveryResult]:
    """Messages a channel may or may not have sent: it is asked per message (`was_delivered`),
    and what it cannot vouch for is recorded failed — at most once, never twice."""
    results = []
    for m in messages:
        try:
            verdict = integration.was_delivered(m.message_pk, m.rfc_message_id) if integration is not None else None
        except Exception:
            verdict = None
        if verdict is True:
            results.append(DeliveryResult(m.message_pk, "sent", reason="reconciled"))
        elif verdict is False:
            results.append(DeliveryResult(m.message_pk, "retry", reason=reason))
        else:
            results.append(DeliveryResult(m.message_pk, "failed", reason=f"delivery_unknown: {reason}"))
    return results


def _update(row: Any, status: str, reason: Optional[str], provider_id: Optional[str],
            subject: Optional[str], now: datetime) -> dict:
    if status == "retry":
        backoff = timedelta(minutes=5 * 2 ** max(0, row.attempts - 1))
        return {"mid": row.id, "st": QUEUED, "rs": reason, "sat": None, "pid": None, "subj": subject,
                "due": now + backoff, "outcome": "retry"}
    return {"mid": row.id, "st": status, "rs": reason, "sat": now if status == SENT else None,
            "pid": provider_id, "subj": subject, "outcome": status}
