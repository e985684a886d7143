"""Rebuilding a SQLite table with or without AUTOINCREMENT, and raising the floor of its ids,
for the migrations that make ids only grow (0019, 0020, 0028, 0029).

SQLite gives a new row of a plain `INTEGER PRIMARY KEY` table max(id) + 1, so once the newest
rows are deleted their ids are handed out again; an AUTOINCREMENT table never hands an id out
twice. SQLite cannot add (or drop) AUTOINCREMENT on a table: it is rebuilt under its own name
with its rows, ids and indexes. The references of other tables to it, by name, are kept as
they are (`legacy_alter_table` while the old table is renamed away); the caller runs with
SQLite's foreign keys off (nurture.store.db.migrate does, and checks them before it commits),
as SQLite's documented procedure for altering a table asks. PostgreSQL's sequences never go
back: nothing to do there.

An AUTOINCREMENT table hands out ids above its `sqlite_sequence` entry and its newest row. Rows
deleted before it became one may have had higher ids that other tables still hold — many
without a foreign key (a conversion's `event_pk`, a journey cursor): `raise_floor` puts the
entry above every one of them, so none of those ids is handed out again.
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


def raise_floor(conn: Any, table: str, references: tuple[str, ...]) -> None:
    """`table`'s next id (an AUTOINCREMENT table) above every id that `references` — statements
    of one value each, `SELECT max(event_pk) FROM conversion_delivery` — name; nothing when it
    is so already. In SQL alone: no rows are loaded."""
    highest = ", ".join(f"coalesce(({sql}), 0)" for sql in references)
    conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) SELECT :t, 0 "
                         "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :t)"), {"t": table})
    conn.execute(sa.text(f"UPDATE sqlite_sequence SET seq = max(seq, {highest}) WHERE name = :t"), {"t": table})


# Where the schema holds ids of the AUTOINCREMENT tables (from 0019 on; 0019 and 0028 raise the
# floors by it). A new row must not get one of them: a conversion delivered for a purged event
# would hold its new namesake (never sent), a cursor would already be past it, a double opt-in
# mail would already have asked its consent. A column added later that holds such an id gets its own migration and list:
# this one describes the schema those two migrations run on, and never changes.
HELD_IDS = {
    "event": ("SELECT max(last_event_pk) FROM journeycursor",
              "SELECT max(event_pk) FROM journeypendingtrigger",
              "SELECT max(trigger_event_pk) FROM enrollment",
              "SELECT max(event_pk) FROM contact_touch",
              "SELECT max(event_pk) FROM conversion_delivery"),
    "enrollment": ("SELECT max(enrollment_id) FROM message",
                   "SELECT max(enrollment_id) FROM handover"),
    "consent": ("SELECT max(CAST(substr(attempt_key, 9) AS INTEGER)) FROM message "
                "WHERE attempt_key GLOB 'consent:[0-9]*'",),  # a double opt-in request's key
}


# Where the schema holds contact ids (migration 0029 raises `contact`'s floor by it; it
# describes the schema 0029 runs on, and never changes — as HELD_IDS). Some columns have no
# foreign key because their rows outlive the contact on purpose: a membership left for the next
# sync to remove from the destination, a conversion delivery, an erasure record, a merge. The
# others (with a foreign key) can still hold an id that is gone in a database written with
# SQLite's foreign keys off. Each max() is one index seek (but a merge's `from_contact_id`:
# merges are few).
HELD_CONTACT_IDS = tuple(f"SELECT max({column}) FROM {table}" for table, column in (
    ("segment_membership", "contact_id"), ("conversion_delivery", "contact_id"), ("erasure", "contact_id"),
    ("contact_merge", "from_contact_id"), ("contact_merge", "into_contact_id"),
    ("event", "contact_id"), ("consent", "contact_id"), ("suppression", "contact_id"), ("enrollment", "contact_id"),
    ("message", "contact_id"), ("handover", "contact_id"), ("deal", "contact_id"), ("contact_touch", "contact_id"),
    ("contact_identity", "contact_id")))
