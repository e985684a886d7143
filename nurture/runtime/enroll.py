"""Enrollment: trigger events read through a per-journey cursor, filtered by `where` in SQL,
subject to the re-entry rule; holdout assigned stably per contact and journey. Segment/`when`
triggers enroll matching contacts in one statement; date triggers live in enroll_dates."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import and_, bindparam, exists, func, or_, select

from nurture.compiler import Plan
from nurture.conditions import ConditionScope, clock_values, compile_condition
from nurture.privacy.tombstones import not_erased
from nurture.runtime.context import Runtime
from nurture.runtime.enroll_dates import enroll_on_dates
from nurture.runtime.timing import arrival_due
from nurture.runtime.when_candidates import WhenCandidates, anchored_by
from nurture.runtime.sql import chunks, for_update, ids_in, insert_ignore, prebuilt, write_many
from nurture.runtime.stable_random import in_holdout
from nurture.store.event_order import settled_newest
from nurture.store.tables import contact_t, cursor_t, enrollment_t, event_t, pending_t


def _cursor(conn: Any, journey: str, now: datetime, trigger: Optional[str] = None) -> int:
    """The journey's cursor, locked. With the `trigger` event it reads: a cursor that read
    another event (the live journey's trigger was changed) starts again at 0 — the `lookback`
    bounds what it enrolls — and one that does not know its event yet (before migration 0023)
    learns it and keeps its place."""
    # Insert-or-ignore, then lock: two workers enrolling a new journey at once must not both
    # insert its cursor (the second would fail on the primary key); the lock serializes them.
    postgres = conn.dialect.name == "postgresql"
    read = prebuilt(("enroll.cursor", postgres), lambda: for_update(
        select(cursor_t.c.last_event_pk, cursor_t.c.trigger_event).where(cursor_t.c.journey == bindparam("journey")),
        conn))
    found = conn.execute(read, {"journey": journey}).first()
    if found is None:
        insert_ignore(conn, cursor_t, [dict(journey=journey, last_event_pk=0, updated_at=now, trigger_event=trigger)],
                      ("journey",))
        found = conn.execute(read, {"journey": journey}).one()
    position, read_event = found
    if trigger is None or read_event == trigger:
        return position
    if read_event is not None:  # the trigger changed: its events are read from the start
        position = 0
    conn.execute(cursor_t.update().where(cursor_t.c.journey == journey)
                 .values(last_event_pk=position, trigger_event=trigger, updated_at=now))
    return position


# The statements of an event trigger's enrollment that do not depend on its `where`: built
# once (nurture.runtime.sql.prebuilt), parameters journey, event, cursor, upper, now.
_NEW = [event_t.c.name == bindparam("event"), event_t.c.id > bindparam("cursor")]
_UPPER = select(func.max(event_t.c.id)).where(*_NEW)
_FUTURE = select(event_t.c.id, event_t.c.occurred_at).where(
    *_NEW, event_t.c.id <= bindparam("upper"), event_t.c.occurred_at > bindparam("now"))
_RIPE = select(pending_t.c.event_pk).where(pending_t.c.journey == bindparam("journey"),
                                           pending_t.c.occurred_at <= bindparam("now"))
_ADVANCE = (cursor_t.update().where(cursor_t.c.journey == bindparam("for_journey"))
            .values(last_event_pk=bindparam("upper"), updated_at=bindparam("now")))
_INSERT = enrollment_t.insert()
_HISTORY = (select(enrollment_t.c.contact_id, enrollment_t.c.status, enrollment_t.c.entered_at)
            .where(enrollment_t.c.journey == bindparam("journey"), ids_in(enrollment_t.c.contact_id, ())))
_CURSOR_AT = select(cursor_t.c.last_event_pk, cursor_t.c.trigger_event).where(cursor_t.c.journey == bindparam("journey"))
_ANY_RIPE = (select(pending_t.c.event_pk).where(pending_t.c.journey == bindparam("journey"),
                                                pending_t.c.occurred_at <= bindparam("now")).limit(1))
# The id of the `skip`+1-th new trigger event up to `upper`: where a slice ends (ix_event_name_id).
_SLICE_END = (select(event_t.c.id).where(*_NEW, event_t.c.id <= bindparam("upper")).order_by(event_t.c.id)
              .offset(bindparam("skip")).limit(1))


def _may_enter(reentry: Any, history: list[tuple[str, datetime]], at: datetime) -> bool:
    if any(status == "active" for status, _ in history):
        return False  # never twice at once in the same journey
    if not history or reentry == "always":
        return True
    if reentry == "never":
        return False
    last_entry = max(entered for _, entered in history)
    return at - last_entry >= reentry


def enroll_matching(rt: Runtime, plan: Plan, now: datetime) -> int:
    """A segment/`when` trigger: every contact matching the condition now enters, unless active
    in the journey or barred by the re-entry rule. The condition is evaluated over every
    contact once, in a read (on most ticks no one new matches, and no write lock is taken);
    the write transaction checks only the contacts that read found, by id, and enrolls those
    that still qualify, one worker at a time per journey. (Someone who starts to match in
    between enters on the next tick, as if the read had come a moment later.) On SQLite a
    condition with an anchor (`{event: X}`) is read only for the contacts that may match
    (nurture.runtime.when_candidates), not over every contact."""
    journey = plan.journey
    key = ("enroll_matching", plan.name, plan.version)
    if key not in rt.memo:  # built once per journey version and Runtime (its segments), run at any time
        scope = ConditionScope(now, rt.project.segments, in_enrollment=False, clock={})
        previous = enrollment_t.alias("previous")
        barred = [previous.c.contact_id == contact_t.c.id, previous.c.journey == bindparam("journey")]
        if journey.reentry == "always":
            barred.append(previous.c.status == "active")
        elif journey.reentry != "never":
            barred.append((previous.c.status == "active") | (previous.c.entered_at > scope.at(journey.reentry)))
        matching = (select(contact_t.c.id, contact_t.c.timezone).where(
            compile_condition(journey.trigger.condition(), scope),
            ~exists(select(previous.c.id).where(*barred)), not_erased(contact_t.c.id)).order_by(contact_t.c.id))
        anchored = anchored_by(journey.trigger.condition(), rt.project.segments,
                               rt.project.policies.retention.events)
        rt.memo[key] = (matching, matching.where(ids_in(contact_t.c.id, ())), scope.clock,
                        WhenCandidates(plan.name, anchored, journey.reentry)
                        if anchored is not None and rt.store.dialect == "sqlite" else None)
    stmt, recheck, clock, tracked = rt.memo[key]
    params = {"journey": plan.name, **clock_values(clock, now)}
    first = plan.nodes[plan.first]
    default_tz = rt.project.policies.timezone
    with rt.store.reading() as conn:
        if tracked is None:
            candidates = [cid for cid, _ in conn.execute(stmt, params)]
        else:  # only who may match (nurture.runtime.when_candidates), checked by id
            candidates = [cid for part in chunks(tracked.candidates(conn, now), 5000)
                          for cid, _ in conn.execute(recheck, {**params, "ids_id": list(part)})]
    if not candidates:
        return 0
    with rt.store.engine.begin() as conn:
        # One writer per journey at a time (the journey's cursor row, locked): a second worker
        # running the same tick re-checks its candidates after the first one's enrollments are
        # committed, so they bar those contacts (on PostgreSQL a statement sees what committed
        # before it began; SQLite's write lock already serializes).
        _cursor(conn, plan.name, now)
        rows = []
        for part in chunks(candidates, 5000):
            rows.extend(conn.execute(recheck, {**params, "ids_id": list(part)}).all())
        new_rows = [dict(contact_id=cid, journey=plan.name, version=plan.version, step_id=plan.first,
                         next_due_at=arrival_due(first, now, tz, default_tz), step_entered_at=now,
                         status="active", holdout=in_holdout(plan.name, cid, journey.holdout),
                         entered_at=now, trigger_event_pk=None, revenue=0.0, defer_count=0, state={})
                    for cid, tz in rows]
        for part in chunks(new_rows, 5000):
            write_many(conn, _INSERT, list(part))
    if tracked is not None:
        tracked.entered([r["contact_id"] for r in new_rows], now)
    return len(new_rows)


# Trigger events per transaction of an event-triggered enrollment: a backlog of a million
# signups is read, filtered and enrolled a slice at a time (by ascending event id), so a
# tick's memory stays flat; each slice advances the cursor as it commits.
ENROLL_SLICE = 50_000


def enroll(rt: Runtime, plan: Plan, now: datetime) -> int:
    """Enroll the contacts of the trigger events tracked since the journey's cursor (and of
    the pending ones that have come due), in slices of ENROLL_SLICE events, each its own
    transaction holding the cursor's row lock (PostgreSQL: two workers never enroll the same
    slice). The earliest qualifying event of a contact enrolls it; a later slice sees the
    enrollments of the earlier ones (a contact is never active twice, `_may_enter`). How many
    contacts entered."""
    journey = plan.journey
    trigger = journey.trigger
    if trigger.date is not None:
        return enroll_on_dates(rt, plan, now).enrolled
    if trigger.event is None:
        return enroll_matching(rt, plan, now)
    if not _anything_new(rt, plan, now):  # a read, not a write transaction, on a quiet tick
        return 0
    entered, upper = 0, None
    while True:
        with rt.store.engine.begin() as conn:
            count, upper, more = _enroll_slice(rt, conn, plan, now, upper)
        entered += count
        if not more:
            return entered


def _anything_new(rt: Runtime, plan: Plan, now: datetime) -> bool:
    """A trigger event past the journey's cursor, or a pending one come due? (No cursor yet: yes.)"""
    with rt.store.reading() as conn:
        found = conn.execute(_CURSOR_AT, {"journey": plan.name}).first()
        if found is None or found.trigger_event != plan.journey.trigger.event:
            return True  # no cursor yet, or one of another trigger (or not knowing its own)
        cursor = found.last_event_pk
        newest = conn.execute(_UPPER, {"event": plan.journey.trigger.event, "cursor": cursor}).scalar()
        return newest is not None or conn.execute(_ANY_RIPE, {"journey": plan.name, "now": now}).first() is not None


def _trigger_rows(rt: Runtime, plan: Plan, with_ripe: bool) -> tuple[Any, dict]:
    """The trigger events of a slice that may enroll — (event id, contact, time, time zone),
    earliest first — and the clock parameters of its `where`: built once per journey version
    and Runtime (its segments), with and without pending events come due (`ids_id`); run with
    event, cursor, high (the slice's last event id), now and since (the lookback's start)."""
    key = ("enroll.trigger_rows", plan.name, plan.version, with_ripe)
    if key not in rt.memo:
        trigger = plan.journey.trigger
        in_window = and_(event_t.c.id > bindparam("cursor"), event_t.c.id <= bindparam("high"),
                         event_t.c.occurred_at <= bindparam("now"))
        filters = [event_t.c.name == bindparam("event"), event_t.c.occurred_at >= bindparam("since"),
                   or_(in_window, ids_in(event_t.c.id, ())) if with_ripe else in_window,
                   not_erased(contact_t.c.id)]
        scope = ConditionScope(datetime.min, rt.project.segments, in_enrollment=False, trigger_event=event_t,
                               clock={})
        if trigger.where is not None:
            filters.append(compile_condition(trigger.where, scope))
        rt.memo[key] = (select(event_t.c.id, event_t.c.contact_id, event_t.c.occurred_at, contact_t.c.timezone)
                        .select_from(event_t.join(contact_t, contact_t.c.id == event_t.c.contact_id))
                        .where(*filters).order_by(event_t.c.occurred_at, event_t.c.id), scope.clock)
    return rt.memo[key]


def _enroll_slice(rt: Runtime, conn: Any, plan: Plan, now: datetime,
                  upper: Optional[int]) -> tuple[int, int, bool]:
    """One slice of `enroll` in the caller's transaction: (contacts entered, the tick's upper
    event id, whether events are left below it). `upper` None: the first slice, which fixes the
    tick's upper bound (the newest trigger event now; later ones wait for the next tick) and
    takes the pending events that have come due."""
    journey = plan.journey
    trigger = journey.trigger
    cursor = _cursor(conn, plan.name, now, trigger.event)  # locked: re-read per slice, another worker may have moved it
    ripe: list[int] = []
    if upper is None:
        # The newest trigger event with every lower id final (store.event_order): on PostgreSQL
        # read after the event writes in flight have ended, else the cursor could pass one.
        upper = settled_newest(conn, rt.store.engine, _UPPER, {"event": trigger.event, "cursor": cursor}) or cursor
        ripe = [pk for (pk,) in conn.execute(_RIPE, {"journey": plan.name, "now": now})]
        for part in chunks(ripe):
            conn.execute(pending_t.delete().where(pending_t.c.journey == plan.name, ids_in(pending_t.c.event_pk, part)))
    if cursor >= upper and not ripe:
        return 0, upper, False
    # The slice ends at the ENROLL_SLICE-th trigger event after the cursor, or at `upper`.
    last = conn.execute(_SLICE_END, {"event": trigger.event, "cursor": cursor, "upper": upper,
                                     "skip": ENROLL_SLICE - 1}).scalar()
    high = last if last is not None else upper
    # Events dated after this tick's clock (clock skew, scheduled events) wait in
    # journeypendingtrigger instead of holding the cursor back for everyone else.
    future = [dict(journey=plan.name, event_pk=pk, occurred_at=at) for pk, at in conn.execute(
        _FUTURE, {"event": trigger.event, "cursor": cursor, "upper": high, "now": now})]
    insert_ignore(conn, pending_t, future, ("journey", "event_pk"))
    stmt, clock = _trigger_rows(rt, plan, bool(ripe))
    rows = conn.execute(stmt, {"event": trigger.event, "cursor": cursor, "high": high, "now": now,
                               "since": now - trigger.lookback, "ids_id": ripe, **clock_values(clock, now)})
    # The earliest qualifying event per contact is the one that enrolls.
    first_by_contact: dict[int, tuple[int, datetime, Optional[str]]] = {}
    later: list[tuple[int, int, datetime]] = []  # (contact, event, time) of a contact's later events
    for event_pk, contact_id, occurred_at, tz in rows:
        if first_by_contact.setdefault(contact_id, (event_pk, occurred_at, tz))[0] != event_pk:
            later.append((contact_id, event_pk, occurred_at))
    # Enrollments of earlier slices (and ticks) are committed rows: read here, they bar re-entry.
    history: dict[int, list[tuple[str, datetime]]] = {}
    for part in chunks(list(first_by_contact), 5000):
        for contact_id, status, entered_at in conn.execute(_HISTORY, {"journey": plan.name,
                                                                      "ids_contact_id": list(part)}):
            history.setdefault(contact_id, []).append((status, entered_at))
    new_rows = []
    first = plan.nodes[plan.first]
    default_tz = rt.project.policies.timezone
    waiting = []  # events that may enroll once the contact's current enrollment has ended
    rejoins = _rejoins(journey)
    for contact_id, (event_pk, occurred_at, tz) in first_by_contact.items():
        if not _may_enter(journey.reentry, history.get(contact_id, []), occurred_at):
            if rejoins and any(status == "active" and entered < occurred_at
                               for status, entered in history.get(contact_id, [])):
                waiting.append(dict(journey=plan.name, event_pk=event_pk, occurred_at=occurred_at))
            continue
        new_rows.append(dict(contact_id=contact_id, journey=plan.name, version=plan.version,
                             step_id=plan.first, next_due_at=arrival_due(first, occurred_at, tz, default_tz),
                             step_entered_at=occurred_at,
                             status="active", holdout=in_holdout(plan.name, contact_id, journey.holdout),
                             entered_at=occurred_at, trigger_event_pk=event_pk, revenue=0.0,
                             defer_count=0, state={}))
    for part in chunks(new_rows, 5000):
        write_many(conn, _INSERT, list(part))
    if rejoins:  # a contact's later events, after the one that enrolls or waits (it enters first)
        waiting.extend(dict(journey=plan.name, event_pk=pk, occurred_at=at) for contact_id, pk, at in later
                       if at > first_by_contact[contact_id][1])
    insert_ignore(conn, pending_t, waiting, ("journey", "event_pk"))
    conn.execute(_ADVANCE, {"for_journey": plan.name, "upper": max(high, cursor), "now": now})
    return len(new_rows), upper, high < upper


def _rejoins(journey: Any) -> bool:
    """Does a trigger event of a contact already in the journey wait for that enrollment to end?
    Where the trigger is also the goal (post-purchase: `purchase` starts it, a `purchase` within
    the window converts it) and re-entry is allowed, the event that converts the enrollment —
    in this tick's exit/convert stage, after enrollment — must also start the next one: it
    waits among the pending triggers and enters on a later tick, within its `lookback` (an
    older one is dropped), if the rule then admits it."""
    return journey.reentry != "never" and journey.goal is not None and journey.goal.event == journey.trigger.event
