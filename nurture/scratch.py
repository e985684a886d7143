"""A scratch copy of a project's database: a temporary SQLite file that `nurture plan` and
`nurture simulate` run the real engine on, so the project's own database and outbox are never
written.

The copy is taken without writing to the source: a SQLite source is read through a read-only
connection with SQLite's online backup API (a consistent snapshot even while another process
ticks; SQLite may leave its usual empty `-wal` / `-shm` side files, the database file itself is
not touched); a PostgreSQL source is copied table by table through SQLAlchemy Core, in
batches, inside one read-only transaction. A project without a database (no file, no Nurture
schema) gets an empty scratch database. The copy is then migrated to this Nurture's schema —
the copy, never the source.

A scratch directory also stands in for the project's data directory (`NURTURE_DATA_DIR`): the
file channels write their outbox there, handovers their JSONL file. `scratch_env` builds the
environment of a Runtime over the copy: file backends only, no CRM, the scratch data
directory and database — whatever the process environment configures.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from sqlalchemy import event, text

from nurture.registry import Channel, IntegrationContext, IntegrationError, channel_for
from nurture.runtime.context import Runtime
from nurture.settings import DATABASE_URL_ENV, describe_database
from nurture.spec.project import ProjectSpec
from nurture.store.db import (DatabaseUnavailable, Store, database_exists, make_engine, open_store, sqlite_path)
from nurture.store.tables import contact_t

COPY_BATCH = 5000
# Settings a scratch run must never inherit: a real provider or CRM would reach real people.
_FORCED_FILE = {"NURTURE_EMAIL_BACKEND": "file", "NURTURE_SMS_BACKEND": "file"}
_DROPPED = ("NURTURE_HANDOVER_CRM", "NURTURE_CREATE_DATABASE")


@dataclass
class Scratch:
    """A temporary directory holding the scratch database (`nurture.db`) and standing in for
    the data directory. `close()` disposes of the store and removes the directory."""
    directory: Path
    store: Store
    copied_from: Optional[str]  # the source database as it may be shown; None: started empty

    @property
    def url(self) -> str:
        return f"sqlite:///{self.directory / 'nurture.db'}"

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        return scratch_env(base, self.directory, self.url)

    def close(self) -> None:
        self.store.dispose()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scratch_runtime(scratch: Scratch, project: ProjectSpec, base_env: Mapping[str, str]) -> Runtime:
    """A Runtime over the scratch copy: its environment from `scratch_env`, and channels that
    are file channels writing into the scratch directory — any other is refused (its messages
    stay queued, reported `unavailable`), so a scratch run can never reach a real recipient."""
    env = scratch.env(base_env)
    context = IntegrationContext(project.root, scratch.directory, env)

    def local_channel(name: str) -> Channel:
        integration = channel_for(name, context)
        if not getattr(integration, "local", False):
            integration.close()
            raise IntegrationError(f"{integration.name} is not a file channel: a scratch run never delivers")
        return integration
    return Runtime(scratch.store, project, env=env, channel_factory=local_channel)


def scratch_env(base: Mapping[str, str], data_dir: Path, url: str) -> dict[str, str]:
    """`base` with the scratch data directory and database, file channels, and no CRM."""
    env = {k: v for k, v in base.items() if k not in _DROPPED}
    env.update(_FORCED_FILE)
    env["NURTURE_DATA_DIR"] = str(data_dir)
    env[DATABASE_URL_ENV] = url
    return env


def open_scratch(source_url: Optional[str], *, empty: bool = False, prefix: str = "nurture-scratch-") -> Scratch:
    """A scratch copy of the database at `source_url` (None, `empty`, or no database there: an
    empty one). Raises DatabaseUnavailable when the source exists but cannot be read."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    target = directory / "nurture.db"
    try:
        copied = None
        if source_url is not None and not empty and database_exists(source_url):
            copied = describe_database(source_url)
            if sqlite_path(source_url) is not None:
                _backup_sqlite(Path(sqlite_path(source_url)), target)  # type: ignore[arg-type]
            elif source_url.split(":", 1)[0].startswith("sqlite"):
                raise DatabaseUnavailable(f"{copied}: an in-memory database cannot be copied")
        store = open_store(f"sqlite:///{target}")  # migrates the copy (or creates the empty one)
        throwaway(store)
        if copied is not None and sqlite_path(source_url) is None:  # type: ignore[arg-type]
            _copy_tables(source_url, store)  # type: ignore[arg-type]
        return Scratch(directory, store, copied)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def throwaway(store: Store) -> None:
    """A database made for one run and rebuilt by the next (a scratch copy, removed at the end;
    the demo's, wiped at its start) never needs to survive a crash of the machine: its commits
    are not synced to disk (PRAGMA synchronous=OFF — a simulation commits tens of thousands of
    times, and a sync of the disk costs far more than the commit). Connections opened from now
    on; the ones open are closed."""
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def _no_sync(dbapi_conn, _record):  # after the store's own settings (registered first)
        dbapi_conn.execute("PRAGMA synchronous=OFF")


def _backup_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup from a read-only connection: a consistent snapshot, the source
    file never written (no checkpoint, no recovery)."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(f"{source}: cannot be read ({exc})") from None
    try:
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(f"{source}: cannot be copied ({exc})") from None
    finally:
        src.close()


def _schema_version(conn) -> Optional[str]:
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _copy_tables(source_url: str, store: Store) -> None:
    """Every Nurture table, row by row in batches, from a database of the same schema version
    (a PostgreSQL source is never migrated here: that would write to it)."""
    source = make_engine(source_url)
    try:
        with source.connect() as src, store.engine.begin() as dst:
            theirs, ours = _schema_version(src), _schema_version(dst)
            if theirs != ours:
                raise DatabaseUnavailable(
                    f"{describe_database(source_url)} has schema version {theirs}, this Nurture {ours}: upgrade "
                    "it first (any nurture command that writes to it does, e.g. nurture run)")
            for table in contact_t.metadata.sorted_tables:
                result = src.execution_options(stream_results=True, yield_per=COPY_BATCH).execute(table.select())
                for rows in result.partitions(COPY_BATCH):
                    dst.execute(table.insert(), [dict(r._mapping) for r in rows])
            _carry_id_positions(src, dst)
            src.rollback()
    finally:
        source.dispose()


def _carry_id_positions(src, dst) -> None:
    """The copy's ids go on where PostgreSQL's sequences stand. A sequence never goes back, so
    an id handed out and deleted since (a purged event or contact) is never handed out again —
    and other tables may still hold it (a delivered conversion's `event_pk`, a membership's
    contact). The copy's AUTOINCREMENT tables would otherwise start above their highest row
    only, and a simulated purchase could take the id of a purged one whose conversion was sent."""
    for table in contact_t.metadata.sorted_tables:
        if not table.dialect_options["sqlite"].get("autoincrement"):
            continue
        last = src.execute(text("SELECT pg_sequence_last_value(pg_get_serial_sequence(:t, 'id'))"),
                           {"t": table.name}).scalar()
        if last:
            dst.execute(text("INSERT INTO sqlite_sequence (name, seq) SELECT :t, 0 "
                             "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :t)"), {"t": table.name})
            dst.execute(text("UPDATE sqlite_sequence SET seq = max(seq, :last) WHERE name = :t"),
                        {"t": table.name, "last": int(last)})
