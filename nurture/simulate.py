"""`nurture simulate`: a discrete-event run of the real journey tick over a period, on a
scratch copy of the project's database (nurture.scratch).

Nothing here decides what a journey does: every tick is `run_tick` — the very stages, in the
very order, that the Prefect flow and the instant path run (nurture.runtime.tick.STAGES). The
simulator only decides *when* to tick, like a scheduler, and feeds events in as time passes:

- Events of an events file become visible at their own timestamp: before a tick at clock t,
  every event of the file up to t is ingested through the real ingest path
  (nurture.ingest.track_records, received at t), never earlier. Events the copied database
  already holds are there from the start, as for a real tick; those dated inside the period
  wake the journeys at their time exactly as the file's events do (read in one statement).
- The clock jumps from moment to moment. A journey is due at the earliest of: an active
  enrollment's `next_due_at` (a wait's end, a quiet-hours or cap deferral's new time, a
  wait_until's local time, a wait_for's timeout), a queued message's `due_at` (a delivery
  re-check deferral, a retry), the time of an exit_when / goal / wait_for event of a contact
  active in the journey (the tick at that moment sees it), and for its trigger event the
  moment the enrollment's first step falls due (an enrollment carries the event's time
  whichever tick makes it, so a journey that begins with `wait: 1h` is ticked once, at
  event + 1h, within the trigger's lookback). A date trigger is due at its local time of day
  in every time zone the contacts live in; a segment or `when` trigger every `heartbeat`
  (its condition changes as time passes). Every journey ticks at the start and at the end.
  Journeys are ticked one after another at a moment, in tick-all's order, and only those due.
- Coalescing is per moment, as the deployed tick-all ticks every journey at once: two moments
  are at least `resolution` apart, and every journey with work due by a moment ticks at it, so
  the work of two journeys for one contact is done in tick-all's order (a send of one counts
  against the other's caps as in a deployed tick). Work falling due between two moments is done
  at the second, at most `resolution` late. A moment alone is exact to the second (a "1h"
  reminder leaves at exactly event + 1h). Resolution 0 means every moment exactly (moments at
  least a second apart).

Scoring, segment sync, CRM pulls and conversions are not part of the tick and are not run; a
simulation never changes the project's database or outbox (file channels write into the
scratch directory; nurture.scratch refuses any other channel).

Output: the funnel — per journey, step, outcome and reason, summed over every tick's report
(the stage counts enrolled / exited / converted as journey-level rows with step "") — and a
timeline per contact read from the scratch message log: enrollments, every guard verdict and
send of a send step, and leaving, each at its UTC instant and the contact's local time.
"""
from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

from pydantic import BaseModel
from sqlalchemy import bindparam, func, or_, select

from nurture.ingest import import_contacts, parse_timestamp, read_records, track_in, track_records
from nurture.runtime.context import Runtime, TickReport
from nurture.runtime.gc_pause import gc_relaxed
from nurture.runtime.tick import as_utc, run_tick
from nurture.send.guards.quiet_hours import zone
from nurture.store.event_order import newest_ids
from nurture.store.models import QUEUED, SENT
from nurture.store.tables import contact_t, enrollment_t, event_t, message_t

DEFAULT_RESOLUTION = timedelta(minutes=5)  # tick-all's schedule (prefect.yaml): never later than a deployed tick
DEFAULT_HEARTBEAT = timedelta(hours=1)
MIN_STEP = timedelta(seconds=1)  # two ticks of a journey are never closer: the clock always moves on


class SimulationInputError(ValueError):
    """Input a simulation cannot run with (a bad file row, an empty period); `details` are the
    lines to show before the message (file:line: field: problem)."""

    def __init__(self, message: str, details: Iterable[str] = ()):
        super().__init__(message)
        self.details = list(details)


# ---------------------------------------------------------------- input files


@dataclass(frozen=True)
class TimedRecord:
    at: datetime
    line: int
    record: dict


class EventFeed:
    """The events of a file, in time order, handed to ingest as the clock reaches them."""

    def __init__(self, name: str, records: list[TimedRecord]):
        self.name = name
        self.records = sorted(records, key=lambda r: (r.at, r.line))
        self._next = 0

    @classmethod
    def read(cls, path: Path) -> "EventFeed":
        """Every line of a JSONL (or CSV) events file, as `nurture track` reads it; a line that
        cannot be read or has no valid timestamp is an error (all of them, in one exception)."""
        errors: list[str] = []
        records: list[TimedRecord] = []
        for line, record, problem in read_records(path):
            if problem is not None:
                errors.append(f"{path.name}:{line}: {problem[0]}: {problem[1]}")
                continue
            if not isinstance(record, dict):
                errors.append(f"{path.name}:{line}: record: must be a JSON object")
                continue
            try:
                at = parse_timestamp(record.get("timestamp"))
            except (ValueError, TypeError) as exc:
                errors.append(f"{path.name}:{line}: timestamp: {exc}")
                continue
            records.append(TimedRecord(at, line, record))
        if errors:
            raise SimulationInputError(f"{path.name}: {len(errors)} bad row(s); nothing was simulated", errors)
        return cls(path.name, records)

    def check(self, rt: Runtime, now: datetime) -> None:
        """Every record through the real ingest code, in a transaction that is rolled back: a
        row ingest would refuse stops the simulation before it starts, not half-way."""
        with rt.store.engine.connect() as conn:
            transaction = conn.begin()
            try:
                result = track_in(conn, [(r.line, r.record) for r in self.records], source=self.name, now=now)
            finally:
                transaction.rollback()
        if result.errors:
            raise SimulationInputError(f"{self.name}: {len(result.errors)} bad row(s); nothing was simulated",
                                       [str(e) for e in sorted(result.errors, key=lambda e: e.line)])

    def take_until(self, moment: datetime) -> list[tuple[int, dict]]:
        start = self._next
        while self._next < len(self.records) and self.records[self._next].at <= moment:
            self._next += 1
        return [(r.line, r.record) for r in self.records[start:self._next]]

    def left_after(self) -> int:
        return len(self.records) - self._next


def import_contacts_file(rt: Runtime, path: Path, now: datetime) -> int:
    """Contacts of a file into the scratch copy at the simulation's start (consents given in
    it count from then); a bad row stops the simulation."""
    policies = rt.project.policies
    result = import_contacts(rt.store, path, now=now, policy_version=policies.version,
                             keep_attributes=policies.keep_attributes)
    if result.errors:
        raise SimulationInputError(f"{path.name}: {len(result.errors)} bad row(s); nothing was simulated",
                                   [str(e) for e in result.errors])
    return result.created + result.updated


# ---------------------------------------------------------------- when a journey is due


def _walk_events(value: Any, segments: dict, seen: set[str], names: set[str], skip: tuple[str, ...] = ()) -> None:
    """Event names mentioned anywhere in a spec model (`event:` fields), segments included."""
    if isinstance(value, BaseModel):
        for key in type(value).model_fields:
            if key in skip:
                continue
            item = getattr(value, key)
            if key == "event" and isinstance(item, str):
                names.add(item)
            elif key == "segment" and isinstance(item, str):
                if item not in seen:
                    seen.add(item)
                    _walk_events(segments.get(item), segments, seen, names)
            else:
                _walk_events(item, segments, seen, names)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _walk_events(item, segments, seen, names)
    elif isinstance(value, dict):
        for item in value.values():
            _walk_events(item, segments, seen, names)


def _find(value: Any, key: str, found: list) -> list:
    """Every value of a field named `key` anywhere in a spec model (steps nest in branches)."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            item = getattr(value, name)
            if name == key and item is not None:
                found.append(item)
            _find(item, key, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _find(item, key, found)
    elif isinstance(value, dict):
        for item in value.values():
            _find(item, key, found)
    return found


@dataclass
class JourneyClock:
    """When one journey is next due, besides what its enrollments and messages say.

    `wakes`: moments the journey must tick at (its trigger events, at the moment the new
    enrollment's first step falls due). `watch`: events that change things for a contact in
    the journey — exit_when, goal, wait_for events — as (moment, contact id, e-mail): the
    journey ticks at that moment only if the contact has an active enrollment in it then, or is
    about to enter it (an exit or a wait_for's event path happens at the event's moment; for
    anyone else the event changes nothing the next tick would not see just as well)."""
    name: str
    watched: frozenset[str]  # event names of exit_when, goal and wait_for
    trigger: Optional[str]  # the trigger event
    trigger_delay: timedelta  # trigger event → the first step falls due (within the lookback)
    heartbeat: Optional[timedelta]  # segment / when / date triggers: re-evaluated this often
    where: Any = None  # the trigger's `where` (a Condition)
    last: Optional[datetime] = None
    wakes: list = field(default_factory=list)  # heap of (moment, the event's time, contact id, e-mail)
    watch: list = field(default_factory=list)  # heap of (moment, contact id or 0, e-mail or "")
    triggered: dict = field(default_factory=dict)  # e-mail or contact id → times of its trigger events

    def event(self, name: str, at: datetime, contact_id: int = 0, email: str = "",
              properties: Optional[dict] = None) -> None:
        """An event at `at` (its properties when known: a trigger event whose properties the
        trigger's `where` surely refuses wakes nothing, see `surely_refused`)."""
        if name == self.trigger and not (self.where is not None and surely_refused(self.where, properties)):
            heapq.heappush(self.wakes, (at + self.trigger_delay, at, contact_id, email))
            for who in (email, contact_id):  # a file's events know the address, the store's the id
                if who:
                    self.triggered.setdefault(who, []).append(at)
        if name in self.watched:
            heapq.heappush(self.watch, (at, contact_id, email))

    def earliest(self, rt: Runtime, fixed: Optional[datetime]) -> Optional[datetime]:
        """The journey's next moment: `fixed` (its due enrollments and messages, its heartbeat)
        or an earlier trigger wake or watched event that still matters. Those are checked only
        when they come first — no tick of the journey can come before them, so what the check
        reads (who is active in the journey) still holds then — and dropped when they do not
        matter: a trigger event of a contact active in the journey cannot enroll it (the tick
        enrolls before it applies exits); a watched event of a contact neither active nor
        entering changes nothing."""
        while True:
            while self.wakes and self.last is not None and self.wakes[0][1] <= self.last:
                heapq.heappop(self.wakes)  # a tick after the event has seen it
            while self.watch and self.last is not None and self.watch[0][0] <= self.last:
                heapq.heappop(self.watch)
            wake = self.wakes[0] if self.wakes else None
            watch = self.watch[0] if self.watch else None
            options = [at for at in (fixed, wake[0] if wake else None, watch[0] if watch else None) if at is not None]
            if not options:
                return None
            first = min(options)
            if first == fixed:
                return fixed
            if wake is not None and wake[0] == first:
                _, _, contact_id, email = wake
                if (contact_id or email) and _active_in(rt, self.name, contact_id, email):
                    heapq.heappop(self.wakes)
                    continue
                return first
            at, contact_id, email = watch  # type: ignore[misc]
            if self._entering(contact_id, email, at) or _active_in(rt, self.name, contact_id, email):
                return at
            heapq.heappop(self.watch)

    def _entering(self, contact_id: int, email: str, at: datetime) -> bool:
        """The contact has a trigger event before `at` that no tick has seen yet (its tick
        waits for the first step): the tick at `at` enrolls it and then sees this event."""
        return any(t <= at and (self.last is None or t > self.last)
                   for who in (email, contact_id) if who for t in self.triggered.get(who, ()))


def surely_refused(where: Any, properties: Optional[dict]) -> bool:
    """Does the trigger condition `where` surely refuse an event with these properties? Only
    what is certain without the database: a `property` comparison by `eq` / `in` with text
    values, against a property that is missing or text (all / any / not of those combined).
    Anything else — other kinds, other operators, numbers, unknown properties — is "maybe",
    and the event wakes the journey as before."""
    if properties is None or not isinstance(properties, dict):
        return False
    kinds = [k for k in ("all", "any", "not_", "attribute", "property", "event", "score", "consent", "segment")
             if getattr(where, k) is not None]
    verdicts = []
    for kind in kinds:
        if kind == "all":
            verdicts.append(any(surely_refused(c, properties) for c in where.all))
        elif kind == "any":
            verdicts.append(all(surely_refused(c, properties) for c in where.any))
        elif kind == "property":
            verdicts.append(any(_text_mismatch(cmp.operators(), properties.get(key))
                                for key, cmp in where.property.items()))
        else:
            verdicts.append(False)
    return any(verdicts)  # the kinds of one mapping are all required: one sure refusal refuses


def _text_mismatch(ops: dict, value: Any) -> bool:
    if value is not None and not isinstance(value, str):
        return False
    for op, wanted in ops.items():
        if op == "eq" and isinstance(wanted, str):
            if value != wanted:
                return True
        elif op == "in" and wanted and all(isinstance(w, str) for w in wanted):
            if value not in wanted:
                return True
    return False


# The scheduler's own reads, built once (nurture.runtime.sql.prebuilt: a simulation runs
# them thousands of times).
def _active_by(who: Any) -> Any:
    return (select(enrollment_t.c.id)
            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
            .where(enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active", who).limit(1))


_ACTIVE_BY_ID = _active_by(contact_t.c.id == bindparam("who"))
_ACTIVE_BY_EMAIL = _active_by(contact_t.c.email == bindparam("who"))
_DUE_ENROLLMENTS = (select(enrollment_t.c.journey, func.min(enrollment_t.c.next_due_at))
                    .where(enrollment_t.c.status == "active",
                           enrollment_t.c.journey.in_(bindparam("journeys", expanding=True)))
                    .group_by(enrollment_t.c.journey))
_DUE_MESSAGES = (select(message_t.c.journey, func.min(message_t.c.due_at))
                 .where(message_t.c.status == QUEUED, message_t.c.journey.in_(bindparam("journeys", expanding=True)))
                 .group_by(message_t.c.journey))
_NEW_EVENTS = (select(event_t.c.id, event_t.c.contact_id, event_t.c.name, event_t.c.occurred_at)
               .where(event_t.c.id > bindparam("after")))
# The events the copied database already holds that the clock must wake for: those of the
# journeys' trigger and watched names dated inside the period (at --from they lie in the
# future: the engine parks a trigger event in journeypendingtrigger, and only a tick at or
# after its time enrolls it). One statement for every name (ix_event_name_id).
_PERIOD_EVENTS = (select(event_t.c.contact_id, contact_t.c.email, event_t.c.name, event_t.c.occurred_at,
                         event_t.c.properties)
                  .select_from(event_t.outerjoin(contact_t, contact_t.c.id == event_t.c.contact_id))
                  .where(event_t.c.name.in_(bindparam("names", expanding=True)), event_t.c.id <= bindparam("upto"),
                         event_t.c.occurred_at > bindparam("start"), event_t.c.occurred_at <= bindparam("end"))
                  .order_by(event_t.c.occurred_at, event_t.c.id))


def _active_in(rt: Runtime, journey: str, contact_id: int, email: str) -> bool:
    query = _ACTIVE_BY_ID if contact_id else _ACTIVE_BY_EMAIL
    with rt.store.reading() as conn:
        return conn.execute(query, {"journey": journey, "who": contact_id or email}).first() is not None


def journey_clock(rt: Runtime, journey: str, heartbeat: timedelta, step: timedelta, start: datetime,
                  end: datetime) -> JourneyClock:
    spec = rt.project.journeys[journey]
    watched: set[str] = set()
    _walk_events(list(spec.exit_when), rt.project.segments, set(), watched)
    if spec.goal is not None:
        watched.add(spec.goal.event)
    for wait_for in _find(list(spec.steps), "wait_for", []):
        _walk_events(wait_for, rt.project.segments, set(), watched, skip=("then", "timeout"))
    trigger = spec.trigger.event
    delay = timedelta(0)
    if trigger is not None:
        plan = rt.plan(journey)
        first = plan.nodes[plan.first]
        if first.kind == "wait":
            # An enrollment carries its event's time whichever tick makes it: the tick can wait
            # until the first step falls due — within the trigger's lookback, less a coalescing step.
            delay = max(timedelta(0), min(first.step.wait, spec.trigger.lookback - step))
    clock = JourneyClock(journey, frozenset(watched), trigger, delay, heartbeat if trigger is None else None,
                         spec.trigger.where)
    if getattr(spec.trigger, "date", None) is not None:
        for moment in _date_moments(rt, spec.trigger, start, end):
            heapq.heappush(clock.wakes, (moment, moment, 0, ""))
    return clock


def _date_moments(rt: Runtime, trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    """When a date trigger can fire in the period: the instants its local time of day (moved by
    the offset, on the wall clock) happens in each time zone the contacts live in. Its
    enrollments carry their occurrence's moment, so the first step is due exactly then."""
    with rt.store.reading() as conn:
        names = {name for (name,) in conn.execute(select(contact_t.c.timezone).distinct())}
    default = rt.project.policies.timezone
    zones = {zone(name, default) for name in names | {None}}
    moments = set()
    day, last = (start - timedelta(days=2)).date(), (end + timedelta(days=2)).date()
    while day <= last:
        for tz in zones:
            wall = datetime.combine(day, trigger.local_time) + trigger.date_offset
            moment = wall.replace(tzinfo=tz).astimezone(timezone.utc)
            if start < moment <= end:
                moments.add(moment)
        day += timedelta(days=1)
    return sorted(moments)


def _due_in_store(rt: Runtime, journeys: list[str]) -> dict[str, datetime]:
    """journey → the earliest active enrollment's next_due_at or queued message's due_at."""
    due: dict[str, datetime] = {}
    with rt.store.reading() as conn:
        for query in (_DUE_ENROLLMENTS, _DUE_MESSAGES):
            for journey, at in conn.execute(query, {"journeys": list(journeys)}):
                if at is not None:
                    at = as_utc(at)
                    due[journey] = min(at, due.get(journey, at))
    return due


def _max_id(rt: Runtime, table: Any) -> int:
    with rt.store.reading() as conn:
        return newest_ids(conn, table)[0]


# ---------------------------------------------------------------- the run


@dataclass
class SimulationResult:
    start: datetime
    end: datetime
    journeys: list[str]
    resolution: timedelta
    heartbeat: timedelta
    moments: int = 0  # clock positions a tick ran at
    ticks: int = 0  # journey ticks run
    events_ingested: int = 0
    events_after_end: int = 0
    ticks_by_journey: Counter = field(default_factory=Counter)
    tick_seconds: float = 0.0  # of the run, the time spent in the ticks themselves
    funnel: list[dict] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)

    def as_dict(self, contact: Optional[str] = None) -> dict:
        timeline = [row for row in self.timeline if contact is None or row["contact"] == contact]
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "journeys": self.journeys,
                "resolution_seconds": int(self.resolution.total_seconds()),
                "heartbeat_seconds": int(self.heartbeat.total_seconds()),
                "moments": self.moments, "ticks": self.ticks, "ticks_by_journey": dict(self.ticks_by_journey),
                "events_ingested": self.events_ingested,
                "events_after_end": self.events_after_end, "funnel": self.funnel, "timeline": timeline}


class World(Protocol):
    """What happens around the journeys while the clock runs (the demo's synthetic company):
    besides a file's events, a world ingests its own and answers what the ticks did."""

    def upcoming(self) -> Iterable[tuple[datetime, str, str, Optional[dict]]]:
        """(time, event name, e-mail, properties or None) of the events it will ingest, each
        once: those not given before (at the start, every one it knows of; later, reactions it
        made up)."""

    def before(self, rt: Runtime, now: datetime) -> None:
        """Bring the store up to `now` (its events up to then, …), before the ticks at `now`."""

    def after(self, rt: Runtime, now: datetime, reports: list[TickReport]) -> None:
        """The ticks at `now` ran (their reports): react."""


def simulate(rt: Runtime, journeys: list[str], start: datetime, end: datetime, *, feed: Optional[EventFeed] = None,
             resolution: timedelta = DEFAULT_RESOLUTION, heartbeat: timedelta = DEFAULT_HEARTBEAT,
             world: Optional[World] = None, timeline: bool = True) -> SimulationResult:
    """Tick `journeys` from `start` to `end` (both included) on `rt` — a Runtime over a scratch
    copy (`nurture simulate`, `plan`) or over the store itself (the demo): every stage writes
    to it — feeding `feed`'s events in as the clock reaches them, and asking `world` (if any)
    around each moment. `timeline`: read the per-contact timeline at the end. The run holds
    one connection (Store.held): tens of thousands of short transactions, one page cache."""
    with gc_relaxed(), rt.store.held():
        return _simulate(rt, journeys, as_utc(start), as_utc(end), feed=feed, resolution=resolution,
                         heartbeat=heartbeat, world=world, timeline=timeline)


def _simulate(rt: Runtime, journeys: list[str], start: datetime, end: datetime, *, feed: Optional[EventFeed],
              resolution: timedelta, heartbeat: timedelta, world: Optional[World], timeline: bool) -> SimulationResult:
    if start > end:
        raise SimulationInputError(f"--from ({start.isoformat()}) is after --to ({end.isoformat()})")
    if heartbeat <= timedelta(0):
        raise SimulationInputError("the heartbeat must be a positive duration")
    step = max(resolution, MIN_STEP)
    result = SimulationResult(start, end, list(journeys), resolution, heartbeat)
    clocks = {j: journey_clock(rt, j, heartbeat, step, start, end) for j in journeys}
    if feed is not None:
        for record in feed.records:
            name, email = str(record.record.get("event")), _email(record.record.get("email"))
            properties = record.record.get("properties") or {}
            for clock in clocks.values():
                clock.event(name, record.at, email=email, properties=properties)

    def world_events() -> None:
        for at, name, email, properties in world.upcoming() if world is not None else ():
            for clock in clocks.values():
                clock.event(name, at, email=_email(email), properties=properties)
    world_events()
    baseline = {"message": _max_id(rt, message_t), "enrollment": _max_id(rt, enrollment_t)}
    orders = {j: rt.plan(j).order for j in journeys}
    funnel: Counter = Counter()
    seen_event = _max_id(rt, event_t)
    _stored_events(rt, clocks, seen_event, start, end)
    moment: Optional[datetime] = start
    due_now = list(journeys)  # every journey ticks at the start: backfills, condition triggers
    due: dict[str, datetime] = {}  # journey → its earliest due enrollment or message (only its ticks change it)
    while moment is not None:
        if world is not None:
            world.before(rt, moment)
            # what the world stored besides its announced events (lifecycle changes of scoring,
            # a CRM import) wakes journeys like the ticks' own events
            seen_event = _engine_events(rt, clocks, seen_event)
        if feed is not None:
            batch = feed.take_until(moment)
            if batch:
                track_records(rt.store, batch, source=feed.name, now=moment)
                result.events_ingested += len(batch)
        seen_event = _max_id(rt, event_t)
        reports = []
        for journey in due_now:
            began = time.perf_counter()
            report = run_tick(rt, journey, moment)
            reports.append(report)
            result.tick_seconds += time.perf_counter() - began
            clocks[journey].last = moment
            result.ticks += 1
            result.ticks_by_journey[journey] += 1
            for name, n in report.stages.items():
                if n:
                    funnel[(journey, "", name, "")] += n
            for row in report.table(orders[journey]):
                funnel[(journey, row["step"], row["outcome"], row["reason"])] += row["count"]
        result.moments += 1
        if world is not None:
            world.after(rt, moment, reports)
            world_events()
        seen_event = _engine_events(rt, clocks, seen_event)
        for journey in due_now:
            due.pop(journey, None)
        due.update(_due_in_store(rt, due_now))
        moment, due_now = _next_moment(rt, clocks, journeys, due, moment + step, end)
        if moment is None and any(clocks[j].last < end for j in journeys):
            # A last tick of every journey at the end: conversions and exits not yet recorded.
            moment, due_now = end, [j for j in journeys if clocks[j].last < end]
    result.events_after_end = feed.left_after() if feed is not None else 0
    result.funnel = _funnel_rows(funnel, journeys, orders)
    if timeline:
        result.timeline = build_timeline(rt, journeys, start, baseline)
    return result


def contact_known(rt: Runtime, email: str) -> bool:
    with rt.store.reading() as conn:
        return conn.execute(select(contact_t.c.id).where(contact_t.c.email == email).limit(1)).first() is not None


def _email(value: Any) -> str:
    """An events row's address as contacts store it, for matching only (ingest checks it):
    the cheap form — the full normalization costs a millisecond, per row of a large file."""
    return str(value or "").strip().lower()


def _stored_events(rt: Runtime, clocks: dict[str, JourneyClock], upto: int, start: datetime,
                   end: datetime) -> None:
    """The database's own events dated inside the period (ids up to `upto`, those it held at the
    start) wake the journeys at their time, as a file's events do."""
    names = sorted({n for clock in clocks.values() for n in (clock.trigger, *clock.watched) if n})
    if not names:
        return
    with rt.store.reading() as conn:
        rows = conn.execute(_PERIOD_EVENTS, {"names": names, "upto": upto, "start": start, "end": end}).all()
    for contact_id, email, name, at, properties in rows:
        for clock in clocks.values():
            clock.event(name, as_utc(at), contact_id=contact_id, email=_email(email), properties=properties)


def _engine_events(rt: Runtime, clocks: dict[str, JourneyClock], after: int) -> int:
    """Events the ticks themselves stored (lifecycle changes, handovers …): wakes like any other."""
    with rt.store.reading() as conn:
        rows = conn.execute(_NEW_EVENTS, {"after": after}).all()
    for event_pk, contact_id, name, at in rows:
        for clock in clocks.values():
            clock.event(name, as_utc(at), contact_id=contact_id)
        after = max(after, event_pk)
    return after


def _next_moment(rt: Runtime, clocks: dict[str, JourneyClock], journeys: list[str], due: dict[str, datetime],
                 not_before: datetime, end: datetime) -> tuple[Optional[datetime], list[str]]:
    """The next moment and the journeys that tick at it. Coalescing is per moment, as the
    deployed tick-all ticks every journey at once: the moment is the earliest work of any
    journey, but no sooner than `not_before` (the last moment + the resolution), and every
    journey with work due by then ticks at it, in tick-all's order — so two journeys' work for
    one contact is done in the order a deployed tick does it (a send of one counts against the
    other's frequency cap as it would there)."""
    earliest: dict[str, datetime] = {}
    for journey in journeys:
        clock = clocks[journey]
        fixed = [at for at in (due.get(journey), clock.last + clock.heartbeat if clock.heartbeat and clock.last
                               else None) if at is not None]
        at = clock.earliest(rt, min(fixed) if fixed else None)
        if at is not None:
            earliest[journey] = at
    if not earliest:
        return None, []
    moment = max(min(earliest.values()), not_before)
    if moment > end:
        return None, []
    return moment, [j for j in journeys if j in earliest and earliest[j] <= moment]


def _funnel_rows(funnel: Counter, journeys: list[str], orders: dict[str, list[str]]) -> list[dict]:
    position = {j: i for i, j in enumerate(journeys)}

    def key(item: tuple) -> tuple:
        (journey, step, outcome, reason), _ = item
        rank = {s: i for i, s in enumerate(orders[journey])}
        return (position[journey], -1 if step == "" else rank.get(step, len(rank)), step, outcome, reason)
    return [{"journey": journey, "step": step, "outcome": outcome, "reason": reason, "count": n}
            for (journey, step, outcome, reason), n in sorted(funnel.items(), key=key) if n]


# ---------------------------------------------------------------- the timeline

_KIND_ORDER = {"enrolled": 0, "send": 1, "left": 2}


def _contact_label(email: Optional[str], phone: Optional[str], contact_id: int) -> str:
    return email or phone or f"contact:{contact_id}"


def build_timeline(rt: Runtime, journeys: list[str], start: datetime, baseline: dict[str, int]) -> list[dict]:
    """What happened to each contact during the run, from the scratch store: enrollments, every
    message row of a send step (a verdict: deferred, suppressed, skipped, holdout; or the send:
    sent, failed, still queued), and leaving the journey."""
    default_tz = rt.project.policies.timezone
    rows: list[tuple] = []
    with rt.store.reading() as conn:
        for e in conn.execute(select(enrollment_t.c.id, enrollment_t.c.contact_id, enrollment_t.c.journey,
                                     enrollment_t.c.step_id, enrollment_t.c.status, enrollment_t.c.entered_at,
                                     enrollment_t.c.left_at, enrollment_t.c.exit_reason, enrollment_t.c.holdout)
                              .where(enrollment_t.c.journey.in_(journeys),
                                     or_(enrollment_t.c.id > baseline["enrollment"], enrollment_t.c.left_at >= start))):
            if e.id > baseline["enrollment"]:
                rows.append((e.contact_id, as_utc(e.entered_at), "enrolled", e.id,
                             dict(journey=e.journey, step="", outcome="enrolled",
                                  reason="holdout" if e.holdout else "")))
            if e.left_at is not None and as_utc(e.left_at) >= start:
                rows.append((e.contact_id, as_utc(e.left_at), "left", e.id,
                             dict(journey=e.journey, step="", outcome=e.status, reason=e.exit_reason or "")))
        for m in conn.execute(select(message_t.c.id, message_t.c.contact_id, message_t.c.journey,
                                     message_t.c.step_id, message_t.c.channel, message_t.c.status,
                                     message_t.c.reason, message_t.c.due_at, message_t.c.created_at,
                                     message_t.c.sent_at, message_t.c.claimed_at)
                              .where(message_t.c.journey.in_(journeys),
                                     or_(message_t.c.id > baseline["message"], message_t.c.sent_at >= start))):
            due, created = as_utc(m.due_at), as_utc(m.created_at)
            if m.status == SENT and m.sent_at is not None:
                at = as_utc(m.sent_at)
            elif m.status == "deferred" or m.status == QUEUED:
                at = created if m.status == "deferred" else due
            elif m.claimed_at is not None:
                at = as_utc(m.claimed_at)  # refused or failed at delivery
            else:
                at = max(created, due)
            extra = dict(journey=m.journey, step=m.step_id, outcome=m.status, reason=m.reason or "",
                         channel=m.channel)
            if m.status == "deferred":
                extra["until"] = due
            rows.append((m.contact_id, at, "send", m.id, extra))
        ids = sorted({r[0] for r in rows})
        contacts: dict[int, tuple] = {}
        for i in range(0, len(ids), 5000):
            part = ids[i:i + 5000]
            contacts.update({c.id: (c.email, c.phone, c.timezone) for c in conn.execute(
                select(contact_t.c.id, contact_t.c.email, contact_t.c.phone, contact_t.c.timezone)
                .where(contact_t.c.id.in_(part)))})
    zones: dict[Optional[str], Any] = {}

    def local(at: datetime, tz_name: Optional[str]) -> str:
        tz = zones.get(tz_name)
        if tz is None:
            tz = zones[tz_name] = zone(tz_name, default_tz)
        return at.astimezone(tz).isoformat()

    out = []
    for contact_id, at, kind, row_id, extra in sorted(
            rows, key=lambda r: (_contact_label(*contacts.get(r[0], (None, None, None))[:2], r[0]), r[1],
                                 _KIND_ORDER[r[2]], r[3])):
        email, phone, tz_name = contacts.get(contact_id, (None, None, None))
        entry = {"contact": _contact_label(email, phone, contact_id), "journey": extra.pop("journey"),
                 "step": extra.pop("step"), "kind": kind, "outcome": extra.pop("outcome"),
                 "reason": extra.pop("reason"), "at": at.isoformat(), "local_time": local(at, tz_name)}
        if "until" in extra:
            until = extra.pop("until")
            entry["until"] = until.isoformat()
            entry["until_local"] = local(until, tz_name)
        entry.update(extra)
        out.append(entry)
    return out
