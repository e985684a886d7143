"""Who may newly match a segment/`when` trigger, without evaluating its condition over every
contact on every tick (SQLite; nurture.runtime.enroll.enroll_matching asks).

A condition whose conjunction holds an *anchor* — `{event: X}` with no `within` and no `count`:
every contact it matches has an X event — can only match anchored contacts. Its *blockers* —
`{not: {event: Y, within: D}}` with no `where` and no `count` — bar a contact until D after its
latest Y. The win_back trigger is one: a purchase ever (the anchor), none in 90 days, no click
or open in 90 days (blockers), and an attribute.

`WhenCandidates` keeps, per Runtime and journey version:
- the anchored contacts (read once, then kept up to date from the events tracked since — on
  SQLite every id at or below the newest one read is final, nurture.store.event_order);
- for each contact, when its blockers let it go (`ready`): the latest Y it has up to the clock,
  plus D — an event dated ahead of the clock is not counted, so `ready` is never later than
  the truth;
- the contacts this Runtime enrolled, asleep until their re-entry period has passed.

Its candidates are the anchored contacts whose blockers have let them go and who are not
asleep. That is a superset of those who match and may enter: the trigger's own statement then
checks the whole condition and the re-entry rule for them, by id, so attributes, consent and
enrollments made elsewhere are read as they are now. What would move an anchor or a blocker
without a new event id makes it read everything again: the first look, a clock that went back,
a merge (nurture.identities moves events with their ids). Retention deletes old events: a
blocker whose window reaches past the events' retention is not used.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional

from sqlalchemy import bindparam, distinct, func, select

from nurture.runtime.sql import texts_in
from nurture.spec.models import Condition
from nurture.store.event_order import newest_ids
from nurture.store.tables import enrollment_t, event_t, merge_t

_KINDS = ("all", "any", "not_", "attribute", "property", "event", "score", "consent", "segment")


@dataclass(frozen=True)
class Anchored:
    anchors: frozenset[str]
    blockers: Mapping[str, timedelta]  # event name → its window (the shortest, if named twice)


def _conjuncts(cond: Condition, segments: Mapping[str, Any], depth: int = 0) -> list[Condition]:
    """The conditions that must all hold for `cond` to hold (its `all`, segments resolved)."""
    if depth > 8:
        return []
    out = [cond]
    for child in cond.all or []:
        out += _conjuncts(child, segments, depth + 1)
    if cond.segment is not None and cond.segment in segments:
        out += _conjuncts(segments[cond.segment].when, segments, depth + 1)
    return out


def _only(cond: Condition, *kinds: str) -> bool:
    return all(getattr(cond, k) is None for k in _KINDS if k not in kinds)


def anchored_by(cond: Optional[Condition], segments: Mapping[str, Any],
                events_kept: Optional[timedelta] = None) -> Optional[Anchored]:
    """The anchors and blockers of a trigger condition (module docstring), None without an anchor."""
    if cond is None:
        return None
    parts = _conjuncts(cond, segments)
    anchors = frozenset(c.event for c in parts if c.event is not None and c.within is None and c.count is None)
    if not anchors:
        return None
    blockers: dict[str, timedelta] = {}
    for c in parts:
        inner = c.not_
        if (inner is not None and _only(c, "not_") and _only(inner, "event") and inner.within is not None
                and inner.where is None and inner.count is None
                and (events_kept is None or inner.within < events_kept)):
            blockers[inner.event] = min(inner.within, blockers.get(inner.event, inner.within))  # type: ignore[index]
    return Anchored(anchors, blockers)


_ANCHORED = select(distinct(event_t.c.contact_id)).where(texts_in(event_t.c.name, ()),
                                                         event_t.c.id <= bindparam("to"))
_LATEST = (select(event_t.c.contact_id, event_t.c.name, func.max(event_t.c.occurred_at))
           .where(texts_in(event_t.c.name, ()), event_t.c.id <= bindparam("to"),
                  event_t.c.occurred_at <= bindparam("now"))
           .group_by(event_t.c.contact_id, event_t.c.name))
_NEW = select(event_t.c.contact_id, event_t.c.name, event_t.c.occurred_at).where(
    texts_in(event_t.c.name, ()), event_t.c.id > bindparam("from"), event_t.c.id <= bindparam("to"))
_ENTERED = (select(enrollment_t.c.contact_id, func.max(enrollment_t.c.entered_at))
            .where(enrollment_t.c.journey == bindparam("journey")).group_by(enrollment_t.c.contact_id))


@dataclass
class WhenCandidates:
    journey: str
    anchored_by: Anchored
    reentry: Any  # "always" | "never" | timedelta
    now: Optional[datetime] = None
    event: int = 0
    merge: int = 0
    anchored: set[int] = field(default_factory=set)
    ready: dict[int, datetime] = field(default_factory=dict)
    eligible: set[int] = field(default_factory=set)
    waiting: list[tuple[datetime, int]] = field(default_factory=list)
    asleep: dict[int, Optional[datetime]] = field(default_factory=dict)  # None: for good
    sleeping: list[tuple[datetime, int]] = field(default_factory=list)

    def candidates(self, conn: Any, now: datetime) -> list[int]:
        """Who may match at `now` (a superset: check them), read in the caller's transaction."""
        top_event, top_merge = newest_ids(conn, event_t, merge_t)
        if self.now is None or now < self.now or top_merge != self.merge:
            self._read_all(conn, now, top_event, top_merge)
        elif top_event > self.event:
            self._read_new(conn, now, top_event)
        self.now = now
        while self.waiting and self.waiting[0][0] <= now:
            at, cid = heapq.heappop(self.waiting)
            if self.ready.get(cid) == at:
                self.eligible.add(cid)
        while self.sleeping and self.sleeping[0][0] <= now:
            until, cid = heapq.heappop(self.sleeping)
            if cid in self.asleep and self.asleep[cid] == until:
                del self.asleep[cid]
        return sorted(c for c in self.eligible if c not in self.asleep)

    def entered(self, contact_ids: list[int], at: datetime) -> None:
        """These contacts entered at `at`: asleep until they may enter again."""
        for cid in contact_ids:
            self._sleep(cid, at)

    def _sleep(self, cid: int, entered_at: datetime) -> None:
        """Barred at least until `entered_at` + the re-entry period (None: for good)."""
        if self.reentry == "always":
            return  # (barred while active: when it leaves is not known here)
        if self.reentry == "never":
            self.asleep[cid] = None
            return
        until = entered_at + self.reentry
        if cid in self.asleep and (self.asleep[cid] is None or self.asleep[cid] >= until):  # type: ignore[operator]
            return
        self.asleep[cid] = until
        heapq.heappush(self.sleeping, (until, cid))

    def _place(self, cid: int, now: datetime) -> None:
        if cid not in self.anchored:
            return
        at = self.ready.get(cid)
        if at is None or at <= now:
            self.eligible.add(cid)
        else:
            self.eligible.discard(cid)
            heapq.heappush(self.waiting, (at, cid))

    def _block(self, cid: int, name: str, occurred_at: datetime) -> None:
        at = occurred_at + self.anchored_by.blockers[name]
        if cid not in self.ready or at > self.ready[cid]:
            self.ready[cid] = at

    def _read_all(self, conn: Any, now: datetime, top_event: int, top_merge: int) -> None:
        a = self.anchored_by
        self.anchored = {cid for (cid,) in conn.execute(_ANCHORED, {"texts_name": sorted(a.anchors), "to": top_event})}
        self.ready, self.eligible, self.waiting = {}, set(), []
        if a.blockers:
            for cid, name, at in conn.execute(_LATEST, {"texts_name": sorted(a.blockers), "to": top_event,
                                                        "now": now}):
                self._block(cid, name, at)
        for cid in self.anchored:
            self._place(cid, now)
        self.asleep, self.sleeping = {}, []
        for cid, entered_at in conn.execute(_ENTERED, {"journey": self.journey}):
            self._sleep(cid, entered_at)
        self.event, self.merge = top_event, top_merge

    def _read_new(self, conn: Any, now: datetime, top_event: int) -> None:
        a = self.anchored_by
        touched = set()
        for cid, name, at in conn.execute(_NEW, {"texts_name": sorted(a.anchors | set(a.blockers)),
                                                 "from": self.event, "to": top_event}):
            if name in a.anchors:
                self.anchored.add(cid)
            if name in a.blockers and at <= now:  # (one dated ahead is not counted: never later than the truth)
                self._block(cid, name, at)
            touched.add(cid)
        for cid in touched:
            self._place(cid, now)
        self.event = top_event
