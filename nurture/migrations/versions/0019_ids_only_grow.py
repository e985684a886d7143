"""Ids that only grow on SQLite: `event`, `enrollment`, `consent` and `contact_merge` become
AUTOINCREMENT tables.

Journey triggers read the events after their cursor (`event.id > last_event_pk`), and a
Runtime's incremental looks at conversions and exits read the events, enrollments, consent rows
and merges after the newest ids they saw (nurture.store.event_order). Without AUTOINCREMENT
SQLite gives a new row max(id) + 1: once the newest rows were deleted (retention, a
never-confirmed contact's removal), the next row got an id a cursor had already passed, and
its event never started a journey. PostgreSQL's sequences never go back: nothing to do there.

SQLite cannot add AUTOINCREMENT to a table; each is rebuilt under its own name with its rows,
ids and indexes (nurture.store.sqlite_rebuild; store.db.migrate turns SQLite's foreign keys
off for a migration and checks them before it commits). `sqlite_sequence` starts
at the newest id copied — for events at the furthest journey cursor if that is higher (events
deleted before this upgrade).

Revision ID: 0019
Revises: 0018
"""
from alembic import op
import sqlalchemy as sa

from nurture.store.sqlite_rebuild import rebuild


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

TABLES = ("event", "enrollment", "consent", "contact_merge")


def _rebuild_all(autoincrement: bool):
    """Every table of TABLES rebuilt on SQLite; its connection, or None on another database."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return None
    for table in TABLES:
        rebuild(conn, table, autoincrement, revision)
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
