"""Which stored events a conversions.yaml entry means, from when, and how they fall due.

- `mql`, `sql`, `opportunity` and `customer` are lifecycle stages: the engine records every
  forward move as one `lifecycle_stage_changed` event `{from, to, source}`
  (nurture.lifecycle), so `event: mql` means those events with `to` = `mql` — the moment a
  contact first became an MQL, once per contact. Any other name is a tracked event's name
  (`purchase`, `deal_won`, `demo_booked`, …).
- The start: an event is considered only when it happened at or after the entry's `since:`
  — or, without one, within the platform's own age limit (`max_age`: Meta 7 days, 62 for
  `physical_store`; Google and LinkedIn 90 days) or `DEFAULT_LOOKBACK` (90 days) for a
  destination without one — counted back from the later of the run's logical time and the
  wall clock, since the platform judges an event's age by the real time of the request.
  Enabling conversions never sends years of history, and nothing is read that the platform
  would refuse anyway. Events after the run's logical time wait.
- `enqueue` is one INSERT … SELECT per (conversion, destination): every matching event
  without a `conversion_delivery` row for that destination gets a `pending` one (NOT EXISTS
  over the unique key, insert-or-ignore against a concurrent run). The work of a run then
  grows with the new events, never with the contacts or the history.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import exists, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from nurture.lifecycle import STAGE_CHANGED, STAGES
from nurture.store.tables import conversion_delivery_t, event_t

DEFAULT_LOOKBACK = timedelta(days=90)
# The stages a contact can move forward to (nobody "becomes" a lead: contacts start as one).
STAGE_EVENTS = STAGES[1:]


def stage_of(event: str) -> Optional[str]:
    """The lifecycle stage a declared event stands for, or None for a tracked event name."""
    return event if event in STAGE_EVENTS else None


def matches(event: str) -> Any:
    """SQL over `event`: the stored events that a declared conversion event means."""
    stage = stage_of(event)
    if stage is None:
        return event_t.c.name == event
    return (event_t.c.name == STAGE_CHANGED) & (event_t.c.properties["to"].as_string() == stage)


def floor(since: Optional[datetime], max_age: Optional[timedelta], now: datetime,
          wall: Optional[datetime] = None) -> datetime:
    """The earliest event time a run at logical time `now` considers, the real time being
    `wall` (see the module docstring)."""
    if since is not None:
        return since
    return max(now, wall or now) - (max_age or DEFAULT_LOOKBACK)


def enqueue(conn: Any, *, target: str, destination: str, conversion: str, since: datetime, now: datetime,
            stamp: datetime) -> int:
    """Insert a `pending` delivery for every matching event in [since, now] that has none for
    `target`; how many were inserted."""
    d = conversion_delivery_t
    held = exists(select(d.c.id).where(d.c.target == target, d.c.event_pk == event_t.c.id))
    stamp_type = d.c.created_at.type
    rows = (select(literal(target), literal(destination), literal(conversion), event_t.c.id, event_t.c.contact_id,
                   literal("pending"), literal(0), literal(stamp, stamp_type), literal(stamp, stamp_type))
            .where(matches(conversion), event_t.c.occurred_at >= since, event_t.c.occurred_at <= now, ~held)
            .order_by(event_t.c.id))
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(d).from_select(["target", "destination", "conversion", "event_pk", "contact_id", "status",
                                  "attempts", "created_at", "updated_at"], rows)
    stmt = stmt.on_conflict_do_nothing(index_elements=["target", "event_pk"])
    return conn.execute(stmt).rowcount or 0
