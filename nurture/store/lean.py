"""A lean execution path for statements a SQLite engine runs again and again.

A tick runs a few dozen statements, a simulation or a large send tick runs them tens of
thousands of times. SQLAlchemy's `Connection.execute` of an already compiled statement costs
~40 µs of Python on top of SQLite's own work (an execution context, parameter processing,
events, result metadata), which for the small reads of a quiet tick is most of the tick.

`LeanConnection` is the `Connection` class of Nurture's SQLite engines (store.db). The second
time one statement *object* is executed on it, the statement is compiled once into its DBAPI
form — SQL text, the order of its parameters, their defaults and bind processors, its result
columns' keys and result processors — and from then on runs straight on the DBAPI cursor of
the same connection and transaction: the parameters converted by the very processors
SQLAlchemy would use, the rows made into SQLAlchemy `Row`s by the very result processors, a
DBAPI error raised as the SQLAlchemy exception it would have been (`IntegrityError`, …).
Statement objects are immutable, so one object always means one SQL text; statements built
afresh for each call are executed once and never compiled here (SQLAlchemy's own cache serves
them).

Everything else takes SQLAlchemy's path unchanged: a first execution, executemany, execution
options, ORM statements, INSERTs without RETURNING (their callers may ask for the inserted
primary key), an empty expanding IN list, a statement whose parameters are not all given,
literal-execute parameters other than a list of integers, callable parameters, and any engine with statement-level event listeners
(tests that count statements see every one). tests/test_lean_execution.py runs
every form both ways and compares.
"""
from __future__ import annotations

import threading
from itertools import chain
from typing import Any, Iterator, Optional

from sqlalchemy import Integer, exc
from sqlalchemy.engine import Connection
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.selectable import CompoundSelect, Select

_LEAN_KINDS = (Select, CompoundSelect, Update, Delete, Insert)
_MAX_ENTRIES = 2048  # statements built per call are seen once: neither table grows without bound
_NO_DEFAULT = object()
_INTEGERS = object()  # (a literal-execute list of integers: rendered into the SQL text)
_FIRST_ROWS = 64  # a SELECT's rows read at once; a longer result is read on as it is asked for

# id(statement) → (the statement, its Plan or None when it cannot run lean). The statement is
# held, so its id cannot be reused by another object while the entry exists.
_PLANS: dict[int, tuple[Any, Optional["Plan"]]] = {}
_SEEN: dict[int, Any] = {}  # executed once so far: id → the statement


class LeanResult(IteratorResult):
    """The rows of a lean execution (a SELECT's read as asked for, others fetched at once):
    every `Result` method, `rowcount` and `returns_rows` as a CursorResult has them."""

    rowcount: int = -1
    returns_rows: bool = True


class Plan:
    """One statement compiled for one SQLite dialect, ready to bind and run."""

    __slots__ = ("sql", "names", "defaults", "processors", "expanding", "metadata", "returns_rows", "simple",
                 "lazy")

    def __init__(self, statement: Any, dialect: Any):
        compiled = statement.compile(dialect=dialect)
        literal = {bind.key for bind in compiled.literal_execute_params}
        if getattr(compiled, "_numeric_binds", False):
            raise _NotLean
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        binds = compiled.binds
        defaults, processors, expanding = [], [], []
        for name in self.names:
            bind = binds[name]
            if bind.callable is not None:
                raise _NotLean
            defaults.append(_NO_DEFAULT if bind.required else bind.value)
            if name in literal:  # rendered in the SQL: only a list of integers (runtime.sql.ids_in)
                if not (bind.expanding and isinstance(bind.type, Integer)):
                    raise _NotLean
                processors.append(_INTEGERS)
            else:
                processors.append(bind.type._cached_bind_processor(dialect))
            expanding.append(bool(bind.expanding))
            if bind.expanding and self.sql.count(f"__[POSTCOMPILE_{name}]") != self.names.count(name):
                raise _NotLean  # (each place the list goes is one name of the parameter order)
        self.defaults = tuple(defaults)
        self.processors = tuple(processors)
        self.expanding = tuple(expanding) if any(expanding) else None
        self.simple = None if self.expanding else tuple(zip(self.names, self.defaults, self.processors))
        self.returns_rows = bool(compiled._result_columns)
        # A SELECT's rows are read as they are asked for (`.first()` of a long result reads one),
        # as SQLAlchemy's cursor result does; a DML statement's (RETURNING) at once.
        self.lazy = isinstance(statement, (Select, CompoundSelect))
        if self.returns_rows:
            keys = [column[0] for column in compiled._result_columns]
            result_processors = [column[3]._cached_result_processor(dialect, None)
                                 for column in compiled._result_columns]
            self.metadata = SimpleResultMetaData(
                keys, _processors=result_processors if any(result_processors) else None)
        else:
            self.metadata = SimpleResultMetaData([])

    def bind(self, parameters: Optional[dict]) -> Optional[tuple[str, list]]:
        """(SQL, DBAPI parameters) for one execution; None where SQLAlchemy must decide (a
        parameter not given, an empty expanding list)."""
        given = parameters or {}
        values: list = []
        if self.simple is not None:  # no expanding list: the SQL as compiled
            for name, default, process in self.simple:
                value = given.get(name, default)
                if value is _NO_DEFAULT:
                    return None
                values.append(value if process is None else process(value))
            return self.sql, values
        sql = self.sql
        for i, name in enumerate(self.names):
            value = given.get(name, self.defaults[i])
            if value is _NO_DEFAULT:
                return None
            process = self.processors[i]
            if self.expanding is not None and self.expanding[i]:
                items = list(value or ())
                if not items:
                    return None
                if process is _INTEGERS:
                    rendered = ", ".join(str(int(v)) for v in items)
                else:
                    values.extend(process(v) for v in items) if process else values.extend(items)
                    rendered = ", ".join("?" * len(items))
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", rendered, 1)
                continue
            values.append(process(value) if process is not None else value)
        return sql, values


class _NotLean(Exception):
    pass


def _plan_for(statement: Any, dialect: Any) -> Optional[Plan]:
    """The statement's Plan, compiled on its second execution; None: SQLAlchemy's path."""
    key = id(statement)
    entry = _PLANS.get(key)
    if entry is not None and entry[0] is statement:
        return entry[1]
    if _SEEN.get(key) is not statement:
        if len(_SEEN) >= _MAX_ENTRIES:
            _SEEN.clear()
        _SEEN[key] = statement
        return None
    _SEEN.pop(key, None)  # (another thread may have cleared it)
    plan: Optional[Plan] = None
    if _leanable(statement):
        try:
            plan = Plan(statement, dialect)
        except _NotLean:
            plan = None
    if len(_PLANS) >= _MAX_ENTRIES:
        _PLANS.clear()
    _PLANS[key] = (statement, plan)
    return plan


def _leanable(statement: Any) -> bool:
    if not isinstance(statement, _LEAN_KINDS):
        return False
    if statement._execution_options or statement._propagate_attrs.get("compile_state_plugin") == "orm":
        return False
    if isinstance(statement, Insert) and not statement._returning:
        return False
    return True


class LeanConnection(Connection):
    """A SQLAlchemy Connection whose `execute` runs a statement seen before on the DBAPI cursor
    directly (see the module's docstring); the same transaction, the same results.
    `read_only`: set by Store.reading() — its transaction is a plain BEGIN (store.db)."""

    read_only = False
    raw_transaction = False  # Store.reading: a read transaction is open on the DBAPI connection
    _held: Optional["_Held"] = None  # lent by Store.held(): closing it hands it back instead

    def close(self) -> None:
        held = self._held
        if held is None or not held.lent:
            return super().close()
        # Handed back to its holder, open: whatever transaction is still open ends here, as
        # a close would end it, and the next `engine.connect()` of the thread gets it again.
        self.read_only = self.raw_transaction = False
        if self._transaction is not None:
            self._transaction.close()
        if self._dbapi_connection is not None and self._dbapi_connection.dbapi_connection.in_transaction:
            self._dbapi_connection.dbapi_connection.rollback()
        held.lent = False

    def execute(self, statement: Any, parameters: Any = None, *, execution_options: Any = None) -> Any:
        if execution_options or not (parameters is None or type(parameters) is dict):
            return super().execute(statement, parameters, execution_options=execution_options)
        plan = _plan_for(statement, self.dialect)
        if plan is None or self._dbapi_connection is None or self._has_statement_listeners():
            return super().execute(statement, parameters)
        transaction = self._transaction
        if transaction is not None and not transaction.is_active or self._nested_transaction is not None:
            return super().execute(statement, parameters)  # SQLAlchemy raises (or nests) as it does
        bound = plan.bind(parameters)
        if bound is None:
            return super().execute(statement, parameters)
        if transaction is None and not self.raw_transaction:
            self._autobegin()
        sql, values = bound
        cursor = self._dbapi_connection.cursor()
        try:
            cursor.execute(sql, values)
            if plan.lazy:
                first = cursor.fetchmany(_FIRST_ROWS)
                if len(first) == _FIRST_ROWS:  # more to come: read as asked for
                    return LeanResult(plan.metadata, chain(first, self._rows(cursor, sql, values)))
                rows = first  # (most results: all of it, no generator per row)
            else:
                rows = cursor.fetchall() if plan.returns_rows else []
        except self.dialect.loaded_dbapi.Error as error:
            cursor.close()
            raise self._wrapped(error, sql, values) from error
        rowcount = cursor.rowcount
        cursor.close()
        result = LeanResult(plan.metadata, iter(rows))
        result.rowcount, result.returns_rows = rowcount, plan.returns_rows
        return result

    def _rows(self, cursor: Any, sql: str, values: list) -> Iterator[Any]:
        """A SELECT's rows as they are read; the cursor closed when they are all read or the
        result is dropped (or closed)."""
        try:
            yield from cursor
        except self.dialect.loaded_dbapi.Error as error:
            raise self._wrapped(error, sql, values) from error
        finally:
            cursor.close()

    def _wrapped(self, error: Exception, sql: str, values: list) -> BaseException:
        """The SQLAlchemy exception SQLAlchemy raises for this DBAPI error (IntegrityError, …)."""
        return exc.DBAPIError.instance(sql, values, error, self.dialect.loaded_dbapi.Error, dialect=self.dialect)

    def _has_statement_listeners(self) -> bool:
        # The engine's (and the Engine class's) listeners: a listener on one Connection object
        # alone is not looked for (the joined dispatch costs more than the lean execution).
        dispatch = self.engine.dispatch
        return bool(dispatch.before_execute or dispatch.before_cursor_execute or dispatch.after_execute
                    or dispatch.after_cursor_execute)


class _Held:
    """A connection a thread holds (Store.held) and lends to its `engine.connect()` calls, one
    at a time: `lent` while a caller has it."""

    __slots__ = ("connection", "lent")

    def __init__(self, connection: LeanConnection):
        self.connection, self.lent = connection, False


class _Holds(threading.local):
    def __init__(self) -> None:
        self.by_engine: dict[int, _Held] = {}


_HOLDS = _Holds()


def connect(engine: Any) -> LeanConnection:
    """The engine's `Connection` class, as SQLAlchemy calls it in `engine.connect()`: the
    connection this thread holds for the engine when it is free (Store.held), else a new one
    from the pool."""
    held = _HOLDS.by_engine.get(id(engine)) if _HOLDS.by_engine else None
    if held is not None and not held.lent and not held.connection.closed:
        held.lent = True
        return held.connection
    return LeanConnection(engine)


def hold(engine: Any) -> Optional[_Held]:
    """Hold a connection of `engine` for this thread (None: one is held already)."""
    if id(engine) in _HOLDS.by_engine:
        return None
    held = _Held(LeanConnection(engine))
    held.connection._held = held
    _HOLDS.by_engine[id(engine)] = held
    return held


def release(engine: Any, held: _Held) -> None:
    """End the hold: the connection goes back to the pool."""
    del _HOLDS.by_engine[id(engine)]
    held.connection._held = None
    held.connection.close()
