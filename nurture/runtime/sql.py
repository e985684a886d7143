"""Small SQL building blocks the stages share: dialect-aware insert-or-ignore, chunked
id lists, bulk writes, and row locking that only PostgreSQL needs (SQLite serializes writers)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from sqlalchemy import Boolean, Float, Integer, String, Table, TypeDecorator, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

CHUNK = 2000


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def ids_in(column: Any, ids: Sequence[int]) -> Any:
    """`column IN (…)` with integer ids rendered into the SQL text: thousands of bound
    parameters cost more to process than the query itself."""
    return column.in_(bindparam(f"ids_{column.name}", value=[int(i) for i in ids], expanding=True,
                                literal_execute=True))


def write_many(conn: Connection, stmt: Any, rows: list[dict]) -> None:
    """`conn.execute(stmt, rows)` — an executemany — for the per-message writes of a tick.

    On SQLite the rows go straight to the DBAPI cursor, converted exactly as SQLAlchemy stores
    them (UTC datetimes as `YYYY-MM-DD HH:MM:SS.ffffff` text, dicts as JSON): SQLAlchemy's
    per-row parameter processing costs more than SQLite's write of the row (~15 µs of a
    message's budget of 200). Other databases take the ordinary path. Every row must have the
    same keys."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(stmt, rows)
        return
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]))
    names = list(compiled.positiontup or ())
    fixed = compiled.construct_params(rows[0])  # + values fixed in the statement (status="completed")
    missing = {n: fixed[n] for n in names if n not in rows[0]}
    if missing:
        rows = [{**missing, **row} for row in rows]
    converted = [(i, _converter(compiled.binds[n].type)) for i, n in enumerate(names)]
    converted = [(i, convert) for i, convert in converted if convert is not None]
    get = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
    params = []
    for row in rows:  # a C getter per row, conversions only where a column needs one
        values = list(get(row))
        for i, convert in converted:
            values[i] = convert(values[i])
        params.append(tuple(values))
    conn.exec_driver_sql(compiled.string, params)


def _converter(column_type: Any) -> Optional[Callable[[Any], Any]]:
    """How a value of a column is stored by SQLAlchemy on SQLite (None: as it is)."""
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl
    if isinstance(column_type, (Integer, String, Boolean, Float)):
        return None
    text: dict[datetime, str] = {}  # a batch shares a handful of timestamps

    def stored(v: Any) -> Any:
        if isinstance(v, datetime):
            out = text.get(v)
            if out is None:
                out = text[v] = sqlite_datetime(v)
            return out
        if isinstance(v, (dict, list)):
            return json.dumps(v, allow_nan=False)  # as the engine's serializer (store.db.strict_json)
        return v
    return stored


def sqlite_datetime(value: datetime) -> str:
    """A timezone-aware datetime as SQLModel + SQLite store it: UTC, microseconds always."""
    if value.utcoffset() is None:
        raise ValueError("datetimes written to the store must be timezone-aware")
    v = value.astimezone(timezone.utc)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}")


def insert_ignore(conn: Connection, table: Table, rows: list[dict], conflict: Iterable[str]) -> None:
    """Insert rows; a row that violates the unique key `conflict` is skipped, not an error."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    else:  # pragma: no cover
        stmt = table.insert()
    for part in chunks(rows, 5000):
        write_many(conn, stmt, list(part))


def for_update(stmt: Any, conn: Connection, *, skip_locked: bool = False) -> Any:
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt
