"""Event ids a cursor can trust: every id at or below the one read is final.

A journey's enrollment reads trigger events after its cursor, the last event id it read
(nurture.runtime.enroll). That is only sound if no event with a lower id can still appear.

- SQLite has one writer at a time: an event's id is taken inside the write transaction that
  commits it, so ids become visible in order. Nothing to do.
- PostgreSQL hands out ids from a sequence when a row is inserted, not when it commits. A track
  request that is still writing holds an id below one that another request has already
  committed. A tick reading the newest id then would move the cursor past the id in flight,
  and that event would never be read.

On PostgreSQL every transaction that writes events first takes a shared advisory lock
(`writing_events`). Writers never wait for each other. A reader of the newest id
(`settled_newest`) takes the same lock exclusively in a short transaction of its own. It waits
until the writes in flight have ended, then reads. Any write that begins after it gets a
higher id from the sequence. The exclusive lock is held only for that one read, so track
requests wait a moment at most.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Table, func, select, text

# Nurture's own key for pg_advisory_* (the ASCII of "nurt-evt"): a 64-bit number that no
# other application on the database is likely to pick.
EVENT_WRITES = int.from_bytes(b"nurt-evt", "big") & ((1 << 63) - 1)

_SHARED = text("SELECT pg_advisory_xact_lock_shared(:key)")
_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(:key)")


def writing_events(conn: Any) -> None:
    """Call in a transaction before it inserts events. On PostgreSQL it takes the shared lock
    until the transaction ends; on SQLite it does nothing."""
    if conn.dialect.name == "postgresql":
        conn.execute(_SHARED, {"key": EVENT_WRITES})


def settled_newest(conn: Any, engine: Engine, statement: Any, params: dict) -> Any:
    """The scalar of `statement`, a read of event ids (the newest trigger event, say), taken
    when every event at or below it has committed or failed. On PostgreSQL it runs in a short
    transaction of its own on `engine`, after the exclusive lock (the caller's transaction,
    `conn`, keeps whatever row locks it holds and takes none of this one's). On SQLite it runs
    in `conn`, the caller's write transaction: SQLite's write lock already orders the ids."""
    if conn.dialect.name != "postgresql":
        return conn.execute(statement, params).scalar()
    with engine.begin() as settled:
        settled.execute(_EXCLUSIVE, {"key": EVENT_WRITES})
        return settled.execute(statement, params).scalar()


_NEWEST: dict[tuple[str, ...], Any] = {}


def newest_ids(conn: Any, *tables: Table) -> tuple[int, ...]:
    """The newest id of each table (0 for an empty one), in one statement of one snapshot. On
    SQLite every id at or below them is final (see above): a process that remembers them can
    later read only what came since — nurture.runtime.outcomes, nurture.runtime.when_candidates."""
    key = tuple(t.name for t in tables)
    stmt = _NEWEST.get(key)
    if stmt is None:
        stmt = _NEWEST[key] = select(*(select(func.max(t.c.id)).scalar_subquery() for t in tables))
    return tuple(i or 0 for i in conn.execute(stmt).one())
