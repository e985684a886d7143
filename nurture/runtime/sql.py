"""Small SQL building blocks the stages share: dialect-aware insert-or-ignore, chunked
id lists, and row locking that only PostgreSQL needs (SQLite serializes writers)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import Table, bindparam
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
        conn.execute(stmt, list(part))


def for_update(stmt: Any, conn: Connection, *, skip_locked: bool = False) -> Any:
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt
