"""Rebuilding a SQLite table with or without AUTOINCREMENT, for the migrations that make ids
only grow (0019, 0020).

SQLite gives a new row of a plain `INTEGER PRIMARY KEY` table max(id) + 1, so once the newest
rows are deleted their ids are handed out again; an AUTOINCREMENT table never hands an id out
twice. SQLite cannot add (or drop) AUTOINCREMENT on a table: it is rebuilt under its own name
with its rows, ids and indexes. The references of other tables to it, by name, are kept as
they are (`legacy_alter_table` while the old table is renamed away); the caller runs with
SQLite's foreign keys off (nurture.store.db.migrate does, and checks them before it commits),
as SQLite's documented procedure for altering a table asks. PostgreSQL's sequences never go
back: nothing to do there.
"""
from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

_COLUMN = re.compile(r"\bid INTEGER NOT NULL(?: PRIMARY KEY AUTOINCREMENT)?,")
_TABLE_KEY = re.compile(r",\s*PRIMARY KEY \(id\)(?=\s*[,)])")


def rebuild(conn: Any, table: str, autoincrement: bool, revision: str) -> None:
    """`table` rebuilt as an AUTOINCREMENT table (or back to a plain one), by migration
    `revision`; nothing when it is so already."""
    if conn.execute(sa.text("PRAGMA foreign_keys")).scalar():  # SQLite would rewrite the references
        raise RuntimeError(f"migration {revision} rebuilds tables: run it with SQLite's foreign keys off "
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
    old = f"{table}__before_{revision}"
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
