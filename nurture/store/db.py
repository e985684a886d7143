"""Engine creation for SQLite (the embedded default) and PostgreSQL, and the automatic
application of Alembic migrations on first use.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`: the write lock is taken up front, so two processes ticking at once
serialize cleanly instead of failing with a stale snapshot half-way through a send batch.
The exception is `Store.reading()`, a read-only transaction: a plain `BEGIN` that reads a
WAL snapshot without waiting for (or holding up) a writer. Processes that cooperate on one
tick also queue for the write lock in order (see write_turns).
On PostgreSQL, the send pipeline serializes per contact with row locks (see runtime.deliver).

A URL whose driver is not installed, or that names no database Nurture can use, is a
`DatabaseUnavailable` with a message for the operator (never a bare ModuleNotFoundError), and
`open_store(url, create=False)` refuses to set up a new, empty database (`DatabaseMissing`).
"""
from __future__ import annotations

import functools
import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from nurture.settings import database_url_problem, describe_database
from nurture.store import json_values, lean, pg_arrays
from nurture.store.write_turns import TurnTakingConnection

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_migrated: set[str] = set()
_lock = threading.Lock()


class DatabaseUnavailable(Exception):
    """The configured database cannot be used as it is (a missing driver, an unsupported or
    unreadable URL, no database where one is required). The message is for the operator and
    never contains the password."""


class DriverMissing(DatabaseUnavailable):
    """The URL needs a database driver that is not installed."""


class UpgradeRefused(DatabaseUnavailable):
    """Migrating a SQLite database to this Nurture's schema would have left rows pointing at rows
    that do not exist; nothing was changed (store.db.migrate)."""


class SchemaTooNew(DatabaseUnavailable):
    """The database was upgraded by a newer Nurture than this one: its schema revision is none
    this code knows. Nothing was changed; this machine's Nurture must be upgraded."""


class DatabaseMissing(DatabaseUnavailable):
    """No Nurture database at the URL (no file, or no Nurture schema in it), and creating one
    was not allowed. `advice` says how to point at the right one."""

    def __init__(self, url: str, advice: str = ""):
        self.url = url
        self.advice = advice
        where = sqlite_path(url) or describe_database(url)
        super().__init__(f"no Nurture database at {where}" + (f": {advice}" if advice else ""))


POSTGRES_EXTRA = "pip install 'nurture[postgres]' (in a checkout: pip install -e '.[postgres]')"


@dataclass
class Store:
    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only: on SQLite its transaction neither waits for nor
        blocks a writer (it reads the last committed snapshot). Each use is its own
        transaction: a fresh snapshot, ended when the block ends.

        On SQLite the read transaction is begun and ended on the DBAPI connection itself, not
        through SQLAlchemy's transaction bookkeeping (a tick reads a dozen times, a simulation
        hundreds of thousands of times: that bookkeeping cost ~35 µs a read, several times a
        small read). A statement that takes SQLAlchemy's own path inside the block still works:
        its autobegin finds the transaction open (`_on_begin`), and the block ends it."""
        if self.engine.dialect.name != "sqlite":
            with self.engine.connect() as conn:
                try:
                    yield conn
                finally:
                    conn.rollback()
            return
        with self.engine.connect() as conn:  # (the pool is LIFO: the connection that wrote last, its cache warm)
            conn.read_only = True  # (lean.LeanConnection; an execution option costs more)
            dbapi = conn.connection.dbapi_connection
            dbapi.execute("BEGIN")  # the snapshot's transaction, outside SQLAlchemy's bookkeeping
            conn.raw_transaction = True  # (lean statements run in it without an autobegin)
            try:
                yield conn
            finally:
                conn.raw_transaction = False
                if conn.in_transaction():  # a statement SQLAlchemy ran began its own bookkeeping
                    conn.rollback()
                elif dbapi.in_transaction:
                    dbapi.execute("ROLLBACK")

    @contextmanager
    def held(self) -> Iterator[None]:
        """Inside, this thread's connections to a SQLite database are one connection, held:
        `engine.connect()`, `engine.begin()` and `reading()` get it when it is free (a nested
        one gets another from the pool), and closing it ends its transaction but keeps it. A
        loop of thousands of short transactions (a simulation, a run of ticks) saves the pool's
        checkout and return each time (~30 µs), and every read and write uses the one page cache.
        Elsewhere (PostgreSQL, a nested hold) it does nothing."""
        held = lean.hold(self.engine) if self.engine.dialect.name == "sqlite" else None
        try:
            yield
        finally:
            if held is not None:
                lean.release(self.engine, held)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()


def normalize_url(url: str) -> str:
    """Accept the URLs people paste: postgres:// and postgresql:// mean psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - trivial
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # 64 MB of page cache instead of SQLite's 2 MB: a tick reads the same enrollment,
        # contact and message pages batch after batch.
        cur.execute("PRAGMA cache_size=-65536")
        # Reads through a memory map (up to 512 MiB of the file): when another process commits,
        # SQLite drops its page cache, and with a map re-reading a page is a memory access
        # instead of a read() system call. ~15 % on a pipelined send tick. Mapped pages count in
        # the process's RSS: at a million contacts a 1 GiB map put the enrolling tick at 976 MB
        # RSS (272 MB its own), growing with the file; 512 MiB: 577 MB, the same tick time, the
        # idle tick 0.17 → 0.20 s (bench_million; no change at 100,000, bench_tick).
        cur.execute("PRAGMA mmap_size=536870912")
        cur.close()
        # how conditions read a JSON string where a number belongs (store.json_values)
        dbapi_conn.create_function(json_values.SQLITE_FUNCTION, 1, json_values.number_of_text, deterministic=True)
        # how `contains` ignores case beyond A–Z (store.json_values)
        dbapi_conn.create_function(json_values.SQLITE_LOWER, 1, json_values.lower_text, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if getattr(conn, "read_only", False):
            dbapi = conn.connection.dbapi_connection
            if not dbapi.in_transaction:  # (Store.reading began it already)
                dbapi.execute("BEGIN")  # (not through execute: ~40 µs a read)
        else:
            conn.connection.dbapi_connection.begin_write()


def strict_json(value: object) -> str:
    """JSON for the store: a non-finite number (NaN, ±Infinity) is refused here, at the write,
    rather than stored as text that SQLite's JSON functions reject on every later read."""
    return json.dumps(value, allow_nan=False)


_decode_json = json.JSONDecoder().decode


def read_json(text: str | bytes) -> object:
    """A JSON column's value as read back: text on SQLite, UTF-8 bytes from psycopg. What
    `json.loads` returns, without its per-call work (for bytes, guessing the encoding: ~1.3 µs
    of the ~3.4 µs a small object costs here); `{}`, the usual empty attributes or properties,
    is not parsed at all. A tick reads two or three of them per message."""
    if text == "{}" or text == b"{}":
        return {}
    if type(text) is bytes:
        text = text.decode("utf-8")  # (the client encoding, UTF-8 on every connection: _make_engine)
    return _decode_json(text)


def is_sqlite(url: str) -> bool:
    scheme = url.split(":", 1)[0]
    return scheme == "sqlite" or scheme.startswith("sqlite+")


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:///PATH URL (None for other databases and in-memory SQLite)."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not is_sqlite(scheme):
        return None
    path = rest.split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def _driver_error(url: str, exc: Exception) -> DatabaseUnavailable:
    shown = describe_database(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    dialect = scheme.split("+", 1)[0]
    if isinstance(exc, ImportError):
        module = getattr(exc, "name", None) or str(exc)
        if dialect in ("postgresql", "postgres") and module.split(".")[0] == "psycopg":
            return DriverMissing(f"the database {shown} is PostgreSQL, and its driver (psycopg) is not "
                                 f"installed: {POSTGRES_EXTRA}")
        if dialect in ("postgresql", "postgres"):
            return DriverMissing(f"the driver {module!r} named in {shown} is not installed; write the URL as "
                                 f"postgresql://… to use psycopg 3: {POSTGRES_EXTRA}")
        return DriverMissing(f"the driver {module!r} for {shown} is not installed (Nurture stores its data "
                             "in SQLite, sqlite:///PATH, or PostgreSQL, postgresql://USER:PASSWORD@HOST/DB)")
    if isinstance(exc, NoSuchModuleError):
        return DatabaseUnavailable(f"{shown}: unknown database type {scheme!r} (Nurture stores its data in "
                                   "SQLite, sqlite:///PATH, or PostgreSQL, postgresql://USER:PASSWORD@HOST/DB)")
    return DatabaseUnavailable(f"{shown} is not a database URL (sqlite:///PATH or "
                               "postgresql://USER:PASSWORD@HOST/DB)")


def make_engine(url: str) -> Engine:
    problem = database_url_problem(url)
    if problem:  # refused before a driver reads it (and repeats part of the password in its error)
        raise DatabaseUnavailable(f"{describe_database(url)}: {problem}")
    try:
        return _make_engine(url)
    except (ImportError, ArgumentError) as exc:  # ArgumentError includes NoSuchModuleError
        raise _driver_error(url, exc) from None


def _make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # No rollback when a connection goes back to the pool: every transaction has ended by
        # then (a Connection closed inside one rolls it back itself), and a second ROLLBACK
        # costs every short read again. A file's pool hands out the connection returned last:
        # a tick that reads after it wrote reads with the connection that wrote, whose page
        # cache is still valid (another connection's commit makes SQLite drop a cache).
        pooled = {"pool_use_lifo": True} if sqlite_path(url) else {}
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False,
                                                      "factory": TurnTakingConnection},
                               json_serializer=strict_json, json_deserializer=read_json, pool_reset_on_return=None, **pooled)
        _configure_sqlite(engine)
        engine._connection_cls = lean.connect  # statements run again and again: see store.lean
        return engine
    # UTF-8 between the store and the server whatever the database's own encoding: JSON columns
    # arrive as bytes of the client encoding, and read_json reads them as UTF-8 (a LATIN1
    # database sent "Köln" as LATIN1 bytes, and every read of that contact failed).
    connect_args = {"client_encoding": "utf8"} if url.startswith("postgresql+psycopg") else {}
    engine = create_engine(url, pool_pre_ping=True, json_serializer=strict_json, json_deserializer=read_json,
                           connect_args=connect_args)
    if engine.dialect.driver == "psycopg":
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # integer arrays in C (store/pg_arrays.py)
            pg_arrays.register(dbapi_conn.adapters)
    return engine


def _alembic_config() -> Any:
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def _scripts() -> Any:
    """The migration scripts, loaded once per process: Alembic finds them by loading every
    migration file (~12 ms on an idle machine), and each process opens many databases (a test
    suite, `nurture web` over several projects) or one database many times over."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(_alembic_config())


@functools.cache
def head_revision() -> str:
    """The newest migration's revision."""
    head = _scripts().get_current_head()
    if head is None:  # (a package without its migrations)
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every migration revision this code has."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _refuse_newer(current: Optional[str]) -> None:
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(f"the database's schema is at revision {current}, which a newer Nurture wrote; this "
                           f"Nurture knows revisions up to {head_revision()}: upgrade Nurture here (every process "
                           "that uses the database — workers, `nurture web`, the CLI — must run the newer version)")


# Nurture's key for the migration's pg_advisory_xact_lock (the ASCII of "nurt-mig").
MIGRATION_LOCK = int.from_bytes(b"nurt-mig", "big") & ((1 << 63) - 1)


def _upgrade(cfg: Any, conn: Any) -> None:
    from alembic import command
    from alembic.util import CommandError
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, "head")
    except CommandError as exc:
        raise DatabaseUnavailable(f"the schema could not be upgraded: {exc}") from None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (creating it on an empty database). A database
    already at the newest version is left alone without running Alembic; one a newer Nurture
    upgraded is refused (SchemaTooNew). On PostgreSQL the processes that open a database at
    the same time after an upgrade take turns (an advisory lock held by the migrating
    transaction): the first migrates, the others find the schema current — without it the
    second ran the same migration again and failed (`relation … already exists`)."""
    cfg = _alembic_config()
    if engine.dialect.name != "sqlite":
        current_sql = "SELECT version_num FROM alembic_version"
        with engine.connect() as conn:  # the common case, without the lock: already current
            if conn.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is not None:
                current = conn.exec_driver_sql(current_sql).scalar()
                if current == head_revision():
                    return
                _refuse_newer(current)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            if conn.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is not None:
                current = conn.exec_driver_sql(current_sql).scalar()
                if current == head_revision():  # another process migrated it meanwhile
                    return
                _refuse_newer(current)
            _upgrade(cfg, conn)
        return
    # SQLite: foreign keys off while the schema changes — a migration that rebuilds a table
    # (0019) must not have SQLite rewrite or check the other tables' references to it
    # meanwhile, the procedure SQLite documents for altering a table — and checked before the
    # commit: a migration that left a reference dangling (one that was not dangling before)
    # fails and changes nothing. The pragma is a no-op inside a transaction, so it is set
    # before the migration's begins; a database already at the newest version is left alone
    # (the check reads every table: it runs only when something is migrated).
    head = head_revision()
    with engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        try:  # (outside a transaction: the connection is in autocommit mode, see _configure_sqlite)
            current = dbapi.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no schema yet
            current = None
        if current is not None and current[0] == head:
            return
        _refuse_newer(current[0] if current is not None else None)
        dbapi.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                dangling_before = set(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall())
                _upgrade(cfg, conn)
                dangling = set(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) - dangling_before
                if dangling:  # (table, rowid, referenced table, key): the first few
                    raise UpgradeRefused("upgrading the schema would leave rows whose references do not "
                                         f"exist, so nothing was changed: {sorted(dangling)[:5]}")
        finally:
            dbapi.execute("PRAGMA foreign_keys=ON")


def has_schema(engine: Engine) -> bool:
    """The database holds Nurture's schema (it was migrated at least once)."""
    return inspect(engine).has_table("alembic_version")


def database_exists(url: str) -> bool:
    """A Nurture database is at `url`: for SQLite a file with Nurture's schema (the check
    never creates the file), for PostgreSQL a database with Nurture's schema (a database the
    server does not have is the driver's error). In-memory SQLite always 'exists'."""
    path = sqlite_path(url)
    if is_sqlite(url) and path is None:
        return True
    if path is not None and (not Path(path).is_file() or Path(path).stat().st_size == 0):
        return False
    engine = make_engine(url)
    try:
        return has_schema(engine)
    finally:
        engine.dispose()


def open_store(url: str, *, auto_migrate: bool = True, create: bool = True) -> Store:
    """The store at `url`, its schema migrated to the newest version. With `create=False` a
    database that does not exist yet (see `database_exists`) is refused with DatabaseMissing
    instead of being created empty; an existing one is still upgraded."""
    path = sqlite_path(url)
    if not create and not database_exists(url):
        raise DatabaseMissing(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    if auto_migrate:
        key = str(engine.url)
        with _lock:
            if key not in _migrated:
                migrate(engine)
                _migrated.add(key)
    return Store(engine)


def table_names(store: Store) -> list[str]:
    return inspect(store.engine).get_table_names()
