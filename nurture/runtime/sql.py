"""Small SQL building blocks the stages share: dialect-aware insert-or-ignore, chunked
id lists, bulk writes, and row locking that only PostgreSQL needs (SQLite serializes writers)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Table, TypeDecorator, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from nurture.store.pg_arrays import int4_array

CHUNK = 2000


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _InList(FunctionElement):
    """`column IN (values)`, compiled per dialect (see `ids_in`)."""
    name = "in_list"
    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a condition as it is (no `= 1` on SQLite: that hides the index)


class _IntArray(TypeDecorator):
    """`integer[]`, sent as an `Int4Array` (store/pg_arrays.py: encoded in C)."""
    impl = postgresql.ARRAY(Integer)
    cache_ok = True

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        return int4_array


@compiles(_InList)
def _in_list(element: _InList, compiler: Any, **kw: Any) -> str:
    column, values = element.clauses
    return compiler.process(column.in_(values), **kw)


@compiles(_InList, "postgresql")
def _in_array(element: _InList, compiler: Any, **kw: Any) -> str:
    column, values = element.clauses
    # A clone of the statement's own parameter (so a cached statement still takes each
    # execution's values), bound as one array instead of expanded into the text.
    array = values._clone()
    array.expanding = False
    array.literal_execute = False
    # The column's own type: `integer = ANY(bigint[])` is a cross-type comparison, which the
    # server cannot hash (a linear search of the array per row scanned: 30x slower).
    array.type = _IntArray() if isinstance(column.type, Integer) else postgresql.ARRAY(column.type)
    bound = compiler.process(array, **kw)
    # In binary (`%(name)b`): psycopg writes a list in text format element by element in
    # Python, ~5x the CPU of the binary format (a 5,000-id list: ~11 ms against ~2 ms).
    if compiler.dialect.driver == "psycopg" and bound.startswith("%(") and ")s" in bound:
        bound = bound.replace(")s", ")b", 1)
    return f"{compiler.process(column, **kw)} = ANY({bound})"


def ids_in(column: Any, ids: Sequence[int]) -> Any:
    """`column IN (…)` for a batch of integer ids. On SQLite the ids are rendered into the SQL
    text: thousands of bound parameters cost more to process than the query itself. On
    PostgreSQL they are one array parameter (`column = ANY(%(ids)s)`): a 5,000-id literal list
    cost the client ~20 ms per statement to render and the driver to scan, and the server to
    parse, several times per batch."""
    return _InList(column, bindparam(f"ids_{column.name}", value=[int(i) for i in ids], expanding=True,
                                     literal_execute=True))


def texts_in(column: Any, values: Sequence[str]) -> Any:
    """`column IN (…)` for a batch of strings (addresses): bound parameters on SQLite, one
    array parameter on PostgreSQL."""
    return _InList(column, bindparam(f"texts_{column.name}", value=list(values), expanding=True))


def not_indexed(column: Any) -> Any:
    """`+column` on SQLite: the same value, but a term over it cannot use an index, so the
    planner takes another one (SQLite's documented way to steer it). Elsewhere the column."""
    return _NotIndexed(column)


class _NotIndexed(FunctionElement):
    name = "not_indexed"
    inherit_cache = True

    def __init__(self, column: Any):
        super().__init__(column)
        self.type = column.type


@compiles(_NotIndexed)
def _not_indexed_default(element: _NotIndexed, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return compiler.process(column, **kw)


@compiles(_NotIndexed, "sqlite")
def _not_indexed_sqlite(element: _NotIndexed, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return f"(+ {compiler.process(column, **kw)})"


def write_many(conn: Connection, stmt: Any, rows: list[dict]) -> int:
    """`conn.execute(stmt, rows)` — an executemany — for the per-message writes of a tick.

    On SQLite the rows go straight to the DBAPI cursor, converted exactly as SQLAlchemy stores
    them (UTC datetimes as `YYYY-MM-DD HH:MM:SS.ffffff` text, dicts as JSON): SQLAlchemy's
    per-row parameter processing costs more than SQLite's write of the row (~15 µs of a
    message's budget of 200). On PostgreSQL an INSERT or a keyed UPDATE becomes one statement
    over arrays (`_pg_unnest`). Other databases take the ordinary path. Every row must have the
    same keys. Returns the number of rows written (an UPDATE's conditions may match none)."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":  # `%(name)b`: psycopg 3
        done = _pg_unnest(conn, stmt, rows)
        return (done if done is not False else conn.execute(stmt, rows)).rowcount
    if conn.dialect.name != "sqlite":
        return conn.execute(stmt, rows).rowcount
    sql, names, missing, kinds = _sqlite_form(conn, stmt, tuple(rows[0]))
    if missing:
        rows = [{**missing, **row} for row in rows]
    converted = [(i, _converter(kind)) for i, kind in kinds]
    get = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
    params = []
    for row in rows:  # a C getter per row, conversions only where a column needs one
        values = list(get(row))
        for i, convert in converted:
            values[i] = convert(values[i])
        params.append(tuple(values))
    return conn.exec_driver_sql(sql, params).rowcount  # (sqlite3: the sum over the rows)


# (id of the statement, its keys) → (the statement, its SQL text, parameter names in order,
# values fixed in the statement, (position, type) of the parameters needing a conversion):
# a statement is compiled once, not at every batch (~0.3 ms each, dozens per tick).
_SQLITE_FORMS: dict[tuple[int, tuple[str, ...]], tuple[Any, str, list[str], dict, list]] = {}


def _sqlite_form(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> tuple[str, list[str], dict, list]:
    cached = _SQLITE_FORMS.get((id(stmt), keys))
    if cached is not None and cached[0] is stmt:  # (the statement is held, so its id is not reused)
        return cached[1:]
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
    names = list(compiled.positiontup or ())
    fixed = compiled.construct_params(dict.fromkeys(keys))  # + values fixed in the statement (status="completed")
    missing = {n: fixed[n] for n in names if n not in keys}
    kinds = [(i, compiled.binds[n].type) for i, n in enumerate(names)]
    kinds = [(i, kind) for i, kind in kinds if _converter(kind) is not None]
    if len(_SQLITE_FORMS) > 512:  # statements built per call (dynamic conditions): no unbounded growth
        _SQLITE_FORMS.clear()
    _SQLITE_FORMS[(id(stmt), keys)] = (stmt, compiled.string, names, missing, kinds)
    return compiled.string, names, missing, kinds


_PG_PARAM = re.compile(r"%\((\w+)\)s")
_PG_INSERT = re.compile(r"^(INSERT INTO \S+ \([^)]*\)) VALUES \(((?:[^()]|\(\w+\))*)\)((?: ON CONFLICT .*)?)$", re.S)
_PG_UPDATE = re.compile(r"^(UPDATE \S+ SET .*?) (WHERE \S+ = %\(\w+\)s(?:::\w+)?(?: AND \S+ = %\(\w+\)s(?:::\w+)?)*)$",
                        re.S)
_PG_ROW = "_nurture_row"
_PG_COUNT = "_nurture_rows"


def _pg_filled(name: str, sql_type: str) -> str:  # one value as an array of the batch's length
    return f"array_fill(%({name})s::{sql_type}, ARRAY[%({_PG_COUNT})s::INTEGER])"


def _pg_array(name: str, sql_type: str, is_json: bool) -> str:
    if is_json:  # its elements are the JSON texts
        return f"%({name})b::TEXT[]::{sql_type}[]"
    return f"%({name})b::{sql_type}[]"


def _pg_unnest(conn: Connection, stmt: Any, rows: list[dict], returning: Sequence[str] = ()) -> Any:
    """The rows of an executemany as one statement over arrays, on PostgreSQL: `INSERT … SELECT
    FROM unnest(%(a)s::type[], …)` or `UPDATE … FROM unnest(…) WHERE t.id = row.id`. psycopg's
    executemany sends one statement per row (in a pipeline, but each is bound, executed and
    acknowledged on its own, after SQLAlchemy's per-row parameter processing): measured on a
    20,000-message tick, the tick's three per-message writes cost ~75 µs a row that way and
    ~45 µs as arrays — what is left is the server's own work on the row and its indexes. The
    semantics are those of the executemany: an UPDATE must be keyed by one column (`WHERE
    t.c = :key`, then `AND t.d = :value` conditions if any) with distinct keys in `rows` (each
    row then changes at most its own target row, already locked by the caller's transaction);
    anything else — an expression the rewrite does not know, a JSON column holding None —
    returns False, and the caller takes the ordinary executemany. A JSON column's values go as an array of their JSON texts, cast on the server
    (`%(p)b::TEXT[]::JSON[]`), written as `strict_json` would (no NaN or Infinity).
    Values are checked as the column types would (a naive datetime is refused). `returning`
    (an INSERT's column names): the statement returns them for the rows it inserted, and so
    does this function (a list of tuples) instead of the statement's result."""
    if getattr(stmt, "is_insert", False):
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]), for_executemany=True)
        shape = _PG_INSERT.match(compiled.string)
    elif getattr(stmt, "is_update", False):
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]))
        shape = _PG_UPDATE.match(compiled.string)
    else:
        return False
    if shape is None:
        return False
    names = list(dict.fromkeys(_PG_PARAM.findall(compiled.string)))
    types: dict[str, str] = {}
    json_names: set[str] = set()
    for name in names:
        bound = compiled.binds[name].type
        impl = bound.impl if isinstance(bound, TypeDecorator) else bound
        if isinstance(impl, JSON):
            json_names.add(name)
        elif not isinstance(impl, (Integer, String, Boolean, Float, DateTime)):
            return False
        types[name] = conn.dialect.type_compiler_instance.process(impl)
    fixed = compiled.construct_params(rows[0])
    missing = {n: fixed[n] for n in names if n not in rows[0]}
    columns = {n: [row[n] for row in rows] if n not in missing else [missing[n]] * len(rows) for n in names}
    for name in json_names:  # JSON as its text, an array of text cast to the column's JSON type
        if any(v is None for v in columns[name]):  # (None: JSON null or SQL NULL — the executemany decides)
            return False
        columns[name] = [json.dumps(v, allow_nan=False) for v in columns[name]]
    for name in names:
        if isinstance(compiled.binds[name].type, TypeDecorator) and types[name].startswith("TIMESTAMP"):
            # (each distinct value once: a batch shares a handful of timestamps)
            if any(v is not None and v.utcoffset() is None for v in set(columns[name])):
                raise ValueError("datetimes written to the store must be timezone-aware")

    conditions: list[str] = []
    if compiled.isinsert:
        head, values, tail = shape.groups()
        keys = names[:1]  # one array at least: it gives the number of rows
    else:
        head, where = shape.groups()
        keys, conditions = _PG_PARAM.findall(where)[:1], _PG_PARAM.findall(where)[1:]
        if len(set(columns[keys[0]])) != len(rows):  # a target row twice: only the executemany is exact
            return False
    # A value the whole batch shares (the journey, the step, the status, the tick's time…) is one
    # parameter, not an array: psycopg dumps an array element by element in Python (~1 µs each).
    # A condition's value is a column of the batch's rows even then, repeated by the server
    # (`filled`): a condition on the table alone (`claim = $4`) let the generic plan psycopg's
    # prepared statement gets from its sixth execution estimate one row, and join the batch's
    # 2,500 rows to it in a nested loop (~1 s a chunk); as a condition of the join it hashes.
    arrays = [n for n in names
              if n in keys or n in conditions or n in json_names or not _same_throughout(columns[n])]
    filled = [n for n in conditions if _same_throughout(columns[n])]
    params = {n: (int4_array(columns[n]) if types[n] == "INTEGER" else columns[n])
              if n in arrays and n not in filled else columns[n][0] for n in names}
    if filled:
        params[_PG_COUNT] = len(rows)

    def as_row_value(sql: str) -> str:
        for name in arrays:
            sql = sql.replace(f"%({name})s::{types[name]}", f"{_PG_ROW}.{name}").replace(f"%({name})s",
                                                                                      f"{_PG_ROW}.{name}")
        return sql
    # Arrays in binary: psycopg's text format of a 5,000-element array costs 5x more client CPU.
    columns_sql = [_pg_filled(n, types[n]) if n in filled else _pg_array(n, types[n], n in json_names) for n in arrays]
    source = f"unnest({', '.join(columns_sql)}) AS {_PG_ROW}({', '.join(arrays)})"
    if compiled.isinsert:
        sql = f"{head} SELECT {as_row_value(values)} FROM {source}{tail}"
        if returning:
            sql += " RETURNING " + ", ".join(f'"{name}"' for name in returning)
    else:
        # The key's array again as a condition on the table itself: the planner then reads the
        # batch's rows by their index. Joined to `unnest` alone it hashed a sequential scan of
        # the whole table for every batch (5,000 rows out of 100,000 enrollments: 30 ms instead
        # of 9, growing with the table).
        column = where.split()[1]
        sql = (f"{as_row_value(head)} FROM {source} {as_row_value(where)} "
               f"AND {column} = ANY({_pg_array(keys[0], types[keys[0]], False)})")
    if any(f"%({n})s" in sql.replace(_pg_filled(n, types[n]), "") for n in arrays):  # one the rewrite did not place
        return False
    result = conn.exec_driver_sql(sql, params)
    return [tuple(r) for r in result.all()] if returning and compiled.isinsert else result


def _same_throughout(values: list[Any]) -> bool:
    first = values[0]
    # Counted in C: equal to the first (or the very object), then all of one type (1 == 1.0 ==
    # True, but they are different parameters).
    return values.count(first) == len(values) and len(set(map(type, values))) == 1


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
        if isinstance(v, dict) and not v:  # (new contacts' and enrollments' `{}`: no encoder run per row)
            return "{}"
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


_PREBUILT: dict[Any, Any] = {}


def prebuilt(key: Any, build: Callable[[], Any]) -> Any:
    """The statement `build()` makes, built once per `key` and reused. Building a statement
    costs ~0.3 ms of Python (coercions, then its cache key), executing a built one ~0.05 ms
    on SQLite: a tick runs dozens, a simulation thousands of ticks. What varies between calls
    must be a `bindparam` (for `ids_in` / `texts_in`: build with an empty list and pass
    `{"ids_<column>": [...]}` / `{"texts_<column>": [...]}` at execution); `key` must name
    everything else the statement depends on (a dialect, a journey's plan)."""
    stmt = _PREBUILT.get(key)
    if stmt is None:
        stmt = _PREBUILT[key] = build()
    return stmt


def ignoring_conflicts(conn: Connection, table: Table, conflict: Iterable[str]) -> Any:
    """`INSERT INTO table`, a row that violates the unique key `conflict` skipped (built once)."""
    dialect, conflict = conn.dialect.name, tuple(conflict)

    def build() -> Any:
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        return table.insert()  # pragma: no cover
    return prebuilt(("insert_ignore", table.name, conflict, dialect), build)


def insert_ignore(conn: Connection, table: Table, rows: list[dict], conflict: Iterable[str],
                  returning: Sequence[str] = ()) -> Optional[list[tuple]]:
    """Insert rows; a row that violates the unique key `conflict` is skipped, not an error.
    With `returning` (column names): on PostgreSQL, those columns of the rows inserted (one
    statement over arrays: no second read); None where they cannot be returned so (SQLite's
    executemany), and the caller reads them back."""
    if not rows:
        return [] if returning else None
    dialect = conn.dialect.name
    stmt = ignoring_conflicts(conn, table, conflict)
    inserted: Optional[list[tuple]] = [] if returning and dialect == "postgresql" else None
    for part in chunks(rows, 5000):
        if inserted is not None and conn.dialect.driver == "psycopg":
            got = _pg_unnest(conn, stmt, list(part), returning)
            if got is not False:
                inserted.extend(got)
                continue
        inserted = None  # (the ordinary executemany cannot return them)
        write_many(conn, stmt, list(part))
    return inserted


def keyed_batch(conn: Connection) -> None:
    """For the rest of this transaction (PostgreSQL): its statements read rows by key — a batch
    of a few thousand ids — so the planner is told not to scan whole tables for them, nor to
    start parallel workers. Under the default costs (a random page read = 4 sequential ones,
    for spinning disks) it hashed all 100,000 contacts, or sorted all consent rows, to find
    the 5,000 of a batch (28 and 22 ms instead of a few). SQLite: nothing (its planner takes
    the key's index)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")


def for_update(stmt: Any, conn: Connection, *, skip_locked: bool = False, of: Any = None) -> Any:
    """`stmt` with FOR UPDATE (of the rows of `of` alone, when given) on PostgreSQL; SQLite's
    write transaction holds the whole database already."""
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked, of=of)
    return stmt
