"""Message ids only grow on SQLite: `message` becomes an AUTOINCREMENT table.

A message's id is its identity outside the database: its Message-ID (`<nurture.ID.journey@…>`),
the name of its .eml file, what the SMTP channel's hand-over journal records for it. Without
AUTOINCREMENT SQLite gives a new row max(id) + 1, so after the newest messages were deleted
(retention purging the whole log of a quiet shop, a never-confirmed contact removed with its
confirmation mail) the next message got a purged one's id — and, had its worker crashed
before handing it over, reconcile would have read the purged message's "accepted" in the
journal as its own and recorded `sent` for a message never sent.

The table is rebuilt with its rows, ids and indexes (nurture.store.sqlite_rebuild; the
migration runs with SQLite's foreign keys off, store.db.migrate checks them before it
commits); `sqlite_sequence` starts at the newest id copied: ids deleted before this upgrade
above it may be handed out once more. PostgreSQL's sequence never goes back: nothing to do.

Revision ID: 0020
Revises: 0019
"""
from alembic import op

from nurture.store.sqlite_rebuild import rebuild


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, "message", True, revision)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, "message", False, revision)
