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
at the newest id copied, or above it at the highest id another table still holds (HELD_IDS:
rows deleted before this upgrade whose ids a journey cursor, a conversion or a message still
names — most without a foreign key). Until 0028 only the journey cursors counted here.

Revision ID: 0019
Revises: 0018
"""
from alembic import op

from nurture.store.sqlite_rebuild import HELD_IDS, raise_floor, rebuild


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
    # Rows deleted before this upgrade may have had ids other tables still hold.
    for table, references in HELD_IDS.items():
        raise_floor(conn, table, references)


def downgrade() -> None:
    _rebuild_all(autoincrement=False)
