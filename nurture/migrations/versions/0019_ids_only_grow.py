"""Ids that only grow on SQLite: `event`, `enrollment`, `consent` and `contact_merge` become
AUTOINCREMENT tables.

Journey triggers read the events after their cursor (`event.id > last_event_pk`), and a
Runtime's incremental looks at conversions and exits read the events, enrollments, consent rows
and merges after the newest ids they saw (nurture.store.event_order). Without AUTOINCREMENT
SQLite gives a new row max(id) + 1: once the newest rows were deleted (retention, a
never-confirmed contact's removal), the next row got an id a cursor had already passed, and
its event never started a journey. PostgreSQL's sequences never go back: nothing to do there.

SQLite cannot add AUTOINCREMENT to a table; each is rebuilt under its own name with its rows,
ids and indexes (the references of other tables to it, by name, are kept as they are:
`legacy_alter_table` while the old one is renamed away; store.db.migrate turns SQLite's
foreign keys off for a migration and checks them before it commits). `sqlite_sequence` starts
at the newest id copied — for events at the furthest journey cursor if that is higher (events
deleted before this upgrade).

Revision ID: 0019
Revises: 0018
"""
import re

from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

TABLES = ("event", "enrollment", "consent", "contact_merge")
_COLUMN = re.compile(r"\bid INTEGER NOT NULL(?: PRIMARY KEY AUTOINCREMENT)?,")
_TABLE_KEY = re.compile(r",\s*PRIMARY KEY \(id\)(?=\s*[,)])")


def _rebuild(conn, table: str, autoincrement: bool) -> None:
    if conn.execute(sa.text("PRAGMA foreign_keys")).scalar():  # SQLite would rewrite the references
        raise RuntimeError("migration 0019 rebuilds tables: run it with SQLite's foreign keys off "
                           "(nurture.store.db.migrate does)")
    ddl = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                       {"t": table}).scalar_one()
    if ("AUTOINCREMENT" in ddl) == autoincrement:
        return
    if autoincrement:
        new = _COLUMN.sub("id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", _TABLE_KEY.sub("", ddl, count=1), count=1)
    else:
        new = _COLUMN.sub("id INTEGER NOT NULL,", ddl, count=1).rstrip()
        new = new[:-1].rstrip() + ", \n\tPRIMARY KEY (id)\n)"
    if new.count("PRIMARY KEY") != 1 or ("AUTOINCREMENT" in new) != autoincrement:
        raise RuntimeError(f"table {table} is not as Nurture created it; cannot rebuild it:\n{ddl}")
    indexes = [r[0] for r in conn.execute(sa.text(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"), {"t": table})]
    columns = ", ".join(f'"{r[1]}"' for r in conn.execute(sa.text(f'PRAGMA table_info("{table}")')))
    old = f"{table}__before_0019"
    conn.execute(sa.text("PRAGMA legacy_alter_table = ON"))  # (other tables' references stay on the name)
    try:
        conn.execute(sa.text(f'ALTER TABLE "{table}" RENAME TO "{old}"'))
        conn.execute(sa.text(new))
        conn.execute(sa.text(f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "{old}"'))
        conn.execute(sa.text(f'DROP TABLE "{old}"'))
    finally:
        conn.execute(sa.text("PRAGMA legacy_alter_table = OFF"))
    for sql in indexes:
        conn.execute(sa.text(sql))


def _rebuild_all(autoincrement: bool):
    """Every table of TABLES rebuilt on SQLite; its connection, or None on another database."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return None
    for table in TABLES:
        _rebuild(conn, table, autoincrement)
    return conn


def upgrade() -> None:
    conn = _rebuild_all(autoincrement=True)
    if conn is None:
        return
    # Events deleted before this upgrade may have had ids a trigger's cursor already passed:
    # the next event starts above every cursor.
    seq = conn.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'event'")).scalar()
    floor = conn.execute(sa.text("SELECT max(last_event_pk) FROM journeycursor")).scalar() or 0
    if seq is None:
        conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('event', :floor)"), {"floor": floor})
    elif floor > seq:
        conn.execute(sa.text("UPDATE sqlite_sequence SET seq = :floor WHERE name = 'event'"), {"floor": floor})


def downgrade() -> None:
    _rebuild_all(autoincrement=False)
