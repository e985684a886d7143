"""Leaving a journey early: `exit_when` conditions (checked at the start of every tick, in
SQL over all active enrollments) and the `goal` (conversion and revenue within a window,
recorded for messaged and holdout contacts alike, so lift can be measured)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import bindparam, exists, func, literal_column, select

from nurture.compiler import Plan
from nurture.conditions import ConditionScope, clock_values, compile_any, properties_match
from nurture.conversions.event_fields import value_of
from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks, ids_in, not_indexed, prebuilt, texts_in
from nurture.spec.models import Condition
from nurture.store.event_order import newest_ids
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, merge_t


LATE_CONVERSIONS = timedelta(days=30)
# Windows that closed within LATE_CONVERSIONS are looked at once per this much of the tick's
# clock in one Runtime, open ones at every tick: a goal event matching a closed window can only
# be one tracked after the window closed (else a tick saw it while it was open), and closed
# windows are most of a busy journey's enrollments (a 3-day window, 33 days looked at).
LATE_EVERY = timedelta(hours=1)


def record_conversions(rt: Runtime, plan: Plan, now: datetime) -> int:
    """Record the conversions of `plan`'s journey: every enrollment whose first goal event (not
    its trigger) falls inside its goal window — entered_at to entered_at + within — and has
    happened by `now`, for windows that opened within `within` + LATE_CONVERSIONS.

    On SQLite a Runtime looks at every such window once, then only at what can have changed
    since its last look (`_since_last_look`): goal events with a higher id, enrollments with a
    higher id, and goal events dated after that look's clock that it has now reached. A
    purchase tracked late is recorded at the next tick. On PostgreSQL ids are handed out before
    commit, so a higher id is no proof of a new row: open windows are looked at on every tick,
    windows closed within LATE_CONVERSIONS at most once per LATE_EVERY of the clock per Runtime
    (a late-tracked goal event is recorded up to an hour after it is tracked)."""
    goal = plan.journey.goal
    if goal is None:
        return 0
    if rt.store.dialect == "sqlite":
        return _since_last_look(rt, plan, now)
    memo = rt.memo.setdefault(("conversions.late", plan.name), {})
    last = memo.get("at")
    with_late = last is None or now < last or now - last >= LATE_EVERY
    since = now - goal.within - (LATE_CONVERSIONS if with_late else timedelta(0))
    converted = _record_conversions(rt, plan, now, since)
    if with_late:
        memo["at"] = now
    return converted


@dataclass
class _Look:
    """What one Runtime's last look at a journey's conversions (or exits) covered, on SQLite:
    every event, enrollment and consent ledger id up to these, at this clock; `future` the
    watched rows it saw dated after its clock ((table, id) → (contact, time)), each looked at
    again once the clock reaches it."""
    event: int
    enrollment: int
    consent: int
    merge: int
    now: datetime
    future: dict[tuple[str, int], tuple[int, datetime]]


# A merge moves a contact's events, consents and enrollments to another one, ids unchanged.
_NEW_MERGES = select(merge_t.c.from_contact_id, merge_t.c.into_contact_id).where(
    merge_t.c.id > bindparam("merges_from"), merge_t.c.id <= bindparam("merges_to"))
# (by id alone: a rowid range; with the journey's name as well SQLite would scan its index)
_NEW_ENROLLMENTS = select(enrollment_t.c.contact_id, enrollment_t.c.journey).where(
    enrollment_t.c.id > bindparam("enrollments_from"), enrollment_t.c.id <= bindparam("enrollments_to"))
_NAMED_EVENTS = select(event_t.c.id, event_t.c.contact_id, event_t.c.occurred_at).where(
    texts_in(event_t.c.name, ()), event_t.c.id > bindparam("from"), event_t.c.id <= bindparam("to"))
_NEW_CONSENTS = select(consent_t.c.id, consent_t.c.contact_id, consent_t.c.recorded_at).where(
    consent_t.c.id > bindparam("from"), consent_t.c.id <= bindparam("to"))
# A first look's: only the rows dated after its clock (the rest it looks at in full).
_FUTURE = {"event": _NAMED_EVENTS.where(event_t.c.occurred_at > bindparam("now")),
           "consent": _NEW_CONSENTS.where(consent_t.c.recorded_at > bindparam("now"))}
_NEW = {"event": _NAMED_EVENTS, "consent": _NEW_CONSENTS}


def _changed_contacts(rt: Runtime, conn: Any, key: tuple, journey: str, names: list[str], consents: bool,
                      now: datetime) -> tuple[Optional[list[int]], _Look]:
    """For a check whose answer per enrollment changes only with its contact's events of
    `names` and (`consents`) consent ledger rows — tracked, reaching the clock, or moved to it
    by a merge (nurture.identities) — and with new enrollments (a conversion, an exit on events
    or consent): the contacts to look at again since this Runtime's last look under `key`, or
    None (look at all: the first look, or the clock went back). SQLite only: one write transaction at a time, and an id is taken
    inside it, so every id at or below the newest one read is final (store.event_order); the
    ledger is append-only. Call in the read's transaction; once the check has been made, store
    the look returned beside them under `key` in `rt.memo`: the next one starts there."""
    last: Optional[_Look] = rt.memo.get(key)
    if last is not None and now < last.now:
        last = None
    top_event, top_enrollment, top_consent, top_merge = newest_ids(conn, event_t, enrollment_t, consent_t, merge_t)
    top = {"event": top_event, "consent": top_consent}
    future = {} if last is None else {k: seen for k, seen in last.future.items() if seen[1] > now}
    contacts = set() if last is None else {cid for cid, at in last.future.values() if at <= now}
    for table in ("event", "consent") if consents else ("event",):
        since = 0 if last is None else getattr(last, table)
        if since >= top[table] or (table == "event" and not names):
            continue
        for pk, cid, at in conn.execute((_NEW if last else _FUTURE)[table], {
                "texts_name": names, "from": since, "to": top[table], "now": now}):
            if at > now:
                future[(table, pk)] = (cid, at)
            else:
                contacts.add(cid)
    if last is not None and top_enrollment > last.enrollment:
        contacts.update(cid for cid, name in conn.execute(
            _NEW_ENROLLMENTS, {"enrollments_from": last.enrollment, "enrollments_to": top_enrollment})
            if name == journey)
    if last is not None and top_merge > last.merge:
        for pair in conn.execute(_NEW_MERGES, {"merges_from": last.merge, "merges_to": top_merge}):
            contacts.update(pair)
    look = _Look(top["event"], top_enrollment, top["consent"], top_merge, now, future)
    return (None if last is None else sorted(contacts)), look


def _since_last_look(rt: Runtime, plan: Plan, now: datetime) -> int:
    """SQLite: who can newly convert since this Runtime's last look is a contact with a goal
    event of a higher id (tracked since, late ones too), with an enrollment of a higher id (its
    goal events may be older), or with a goal event that was dated after the last look's clock
    (`_changed_contacts`). Only their windows are looked at."""
    goal = plan.journey.goal
    key = ("conversions.look", plan.name, plan.version)
    params = {"journey": plan.name, "event": goal.event, "now": now,
              "entered_since": now - goal.within - LATE_CONVERSIONS}
    with rt.store.reading() as conn:
        contacts, look = _changed_contacts(rt, conn, key, plan.name, [goal.event], False, now)
        looks = [("all", params)] if contacts is None else [
            ("contacts", {**params, "ids_contact_id": list(part)}) for part in chunks(contacts)]
        found = bool(looks) and bool(_firsts(rt, conn, plan, looks))
    converted = _convert(rt, plan, looks, now) if found else 0
    rt.memo[key] = look
    return converted


def _window_end(dialect: str, seconds: int) -> Any:
    """enrollment.entered_at + `seconds`, in SQL: a bound on the goal event's time that the
    database can use (the exact window is checked in Python; this one is a second wider:
    SQLite's datetime() drops the fraction)."""
    if dialect == "sqlite":
        return func.datetime(enrollment_t.c.entered_at, f"+{seconds + 1} seconds")
    return enrollment_t.c.entered_at + literal_column(f"interval '{seconds + 1} seconds'")


def _conversions_stmt(rt: Runtime, plan: Plan, only: str, locking: bool) -> Any:
    """The (enrollment, goal event) pairs that may convert, earliest event first per enrollment:
    of `all` the windows opened since `entered_since`, or of the given `contacts` only. Built
    once per journey version. `locking`: in the write transaction the
    enrollments are locked as they are read (PostgreSQL, in id order), so a second worker
    recording the same tick waits, then finds them converted."""
    goal = plan.journey.goal
    dialect = rt.store.dialect

    def build() -> Any:
        later = enrollment_t.alias("later_entry")
        # The contacts' own enrollments by ix_enrollment_contact, not all the journey's open ones.
        journey = not_indexed(enrollment_t.c.journey) if only == "contacts" else enrollment_t.c.journey
        filters = [journey == bindparam("journey"), enrollment_t.c.converted_at.is_(None),
                   # Windows that closed recently are looked at too: a purchase tracked late (or a
                   # paused schedule) still counts if it happened inside the window.
                   enrollment_t.c.entered_at >= bindparam("entered_since"),
                   event_t.c.contact_id == enrollment_t.c.contact_id, event_t.c.name == bindparam("event"),
                   event_t.c.occurred_at >= enrollment_t.c.entered_at, event_t.c.occurred_at <= bindparam("now"),
                   event_t.c.occurred_at <= _window_end(dialect, int(goal.within.total_seconds())),
                   (enrollment_t.c.trigger_event_pk.is_(None)) | (event_t.c.id != enrollment_t.c.trigger_event_pk),
                   # One goal event converts one enrollment: the contact's latest entry before it
                   # (a re-entered contact's earlier window may still be open; docs/report.md).
                   ~exists(select(later.c.id).where(
                       later.c.contact_id == enrollment_t.c.contact_id, later.c.journey == enrollment_t.c.journey,
                       later.c.entered_at > enrollment_t.c.entered_at, later.c.entered_at < event_t.c.occurred_at))]
        if goal.where:
            filters.append(properties_match(event_t.c.properties, goal.where))
        if only == "contacts":
            filters.append(ids_in(enrollment_t.c.contact_id, ()))
        stmt = (select(enrollment_t.c.id, enrollment_t.c.entered_at, enrollment_t.c.status,
                       event_t.c.occurred_at, event_t.c.properties)
                .where(*filters).order_by(enrollment_t.c.id, event_t.c.occurred_at))
        return stmt.with_for_update(of=enrollment_t) if locking and dialect == "postgresql" else stmt
    # (`where` is part of the plan)
    return prebuilt(("conversions", only, locking, plan.name, plan.version, dialect), build)


def _firsts(rt: Runtime, conn: Any, plan: Plan, looks: list[tuple[str, dict]], locking: bool = False
            ) -> dict[int, tuple]:
    """enrollment id → (status, time, properties) of its first goal event inside the window,
    over the rows of every look — (`_conversions_stmt`'s `only`, its parameters; each
    enrollment in one)."""
    within = plan.journey.goal.within
    rows = (row for only, params in looks for row in conn.execute(_conversions_stmt(rt, plan, only, locking), params))
    first: dict[int, tuple] = {}
    for enrollment_id, entered_at, status, occurred_at, props in rows:
        if occurred_at - entered_at <= within:
            first.setdefault(enrollment_id, (status, occurred_at, props or {}))
    return first


def _record_conversions(rt: Runtime, plan: Plan, now: datetime, entered_since: datetime) -> int:
    goal = plan.journey.goal
    looks = [("all", {"journey": plan.name, "event": goal.event, "now": now, "entered_since": entered_since})]
    with rt.store.reading() as conn:  # a read first: most ticks record no conversion
        if not _firsts(rt, conn, plan, looks):
            return 0
    return _convert(rt, plan, looks, now)


def _convert(rt: Runtime, plan: Plan, looks: list[tuple[str, dict]], now: datetime) -> int:
    """In one write transaction: read the looks again, locking, and record each enrollment's
    conversion."""
    with rt.store.engine.begin() as conn:
        first = _firsts(rt, conn, plan, looks, locking=True)
        updates = []
        for enrollment_id, (status, occurred_at, props) in first.items():
            # a stored property is whatever a browser sent: "NaN", "1e400" or -5 is no revenue
            revenue = value_of(props) or 0.0
            leaves = status in ("active", "completed")
            updates.append({"eid": enrollment_id, "converted_at": occurred_at, "revenue": revenue,
                            "status": "converted" if leaves else status})
        if updates:
            conn.execute(enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
                         .values(converted_at=bindparam("converted_at"),
                                 revenue=bindparam("revenue"),
                                 status=bindparam("status")), updates)
            # A converted contact leaves the journey: no more messages about a finished purchase.
            ids = [u["eid"] for u in updates if u["status"] == "converted"]
            for part in chunks(ids):
                conn.execute(enrollment_t.update()
                             .where(enrollment_t.c.id.in_(part), enrollment_t.c.step_id.isnot(None))
                             .values(step_id=None, next_due_at=None, left_at=now, exit_reason="goal"))
        return len(updates)


def watched_by(conds: list[Condition]) -> Optional[tuple[set[str], bool]]:
    """What whether an enrollment meets `conds` can change with, when that is only its
    contact's events of some names and its consent ledger rows (tracked, or reaching the
    clock): (the event names, whether consent is among them). That holds for `event` atoms
    without `within` (ever, or since the enrollment, `where` and `count` included), `consent`
    atoms, the trigger's `property`, combined with all / any / not. None when anything else is
    in them (attributes, score, segments, a `within` window that the clock moves)."""
    names: set[str] = set()
    consent = False

    def walk(cond: Condition) -> bool:
        nonlocal consent
        if any(getattr(cond, k) is not None for k in ("attribute", "score", "segment", "within")):
            return False
        if cond.event is not None:
            names.add(cond.event)
        consent = consent or cond.consent is not None
        return all(walk(c) for c in (cond.all or []) + (cond.any or []) + ([cond.not_] if cond.not_ else []))
    return (names, consent) if conds and all(walk(c) for c in conds) else None


def apply_exits(rt: Runtime, plan: Plan, now: datetime) -> int:
    """Let the active enrollments that meet `exit_when` leave. On SQLite, when the conditions
    depend on events and consent only (`watched_by`), a Runtime looks again only at the
    contacts with such an event or consent row since its last look, or a new enrollment
    (`_changed_contacts`, as conversions do); otherwise, and on PostgreSQL, at every active
    enrollment on every tick."""
    key = ("exits", plan.name, plan.version)
    if key not in rt.memo:  # built once per journey version and Runtime (its segments), run at any time
        scope = ConditionScope(now, rt.project.segments, in_enrollment=True, clock={})
        condition = compile_any(list(plan.journey.exit_when), scope)
        if condition is None:
            rt.memo[key] = None
        else:
            who = (select(enrollment_t.c.id)
                   .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id)))
            rt.memo[key] = (
                who.where(enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active",
                          condition),
                # the contacts' own (by ix_enrollment_contact, not every active one of the journey)
                who.where(not_indexed(enrollment_t.c.journey) == bindparam("journey"),
                          enrollment_t.c.status == "active", ids_in(enrollment_t.c.contact_id, ()), condition),
                scope.clock, watched_by(list(plan.journey.exit_when)))
    if rt.memo[key] is None:
        return 0
    stmt, of_contacts, clock, watched = rt.memo[key]
    params = {"journey": plan.name, **clock_values(clock, now)}
    looks = [(stmt, params)]
    incremental = watched is not None and rt.store.dialect == "sqlite"
    with rt.store.reading() as conn:  # a read first: most ticks exit no one
        if incremental:
            contacts, look = _changed_contacts(rt, conn, ("exits.look", plan.name, plan.version), plan.name,
                                               sorted(watched[0]), watched[1], now)
            if contacts is not None:
                looks = [(of_contacts, {**params, "ids_contact_id": list(part)}) for part in chunks(contacts)]
        found = any(conn.execute(s, p).first() is not None for s, p in looks)
    exited = 0
    if found:
        with rt.store.engine.begin() as conn:
            ids = [r[0] for s, p in looks for r in conn.execute(s, p)]
            for part in chunks(ids):  # (another worker's tick may have let some of them exit since the read)
                exited += conn.execute(
                    enrollment_t.update().where(enrollment_t.c.id.in_(part), enrollment_t.c.status == "active")
                    .values(status="exited", step_id=None, next_due_at=None, left_at=now,
                            exit_reason="exit_when")).rowcount
    if incremental:
        rt.memo[("exits.look", plan.name, plan.version)] = look
    return exited
