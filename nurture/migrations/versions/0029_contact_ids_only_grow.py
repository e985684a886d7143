"""Contact ids only grow on SQLite: `contact` becomes an AUTOINCREMENT table.

A contact's id outlives the contact. The links in the mail it was sent carry it (the signed
preference and unsubscribe link, valid for a year; the confirmation link); its acknowledged
audience and CRM-list memberships stay after a purge until the next sync removes them at the
destination; conversion deliveries, erasure records and merges name it without a foreign key.
Without AUTOINCREMENT SQLite gives a new contact max(id) + 1, so once the newest contacts were
deleted (retention purging never-confirmed sign-ups) the next sign-up got a purged one's id:
the purged person's old preference link opened the new person's preference center (their
address on the page) and unsubscribed them; the new person's export listed the purged one's
memberships (address, HubSpot record id); the next sync took the purged one's acknowledged
membership for the new person's, an update where one person leaves a list and another joins.

The table is rebuilt with its rows, ids and indexes (nurture.store.sqlite_rebuild; the other
tables' references to it stay; store.db.migrate runs this with SQLite's foreign keys off and
checks them before it commits), and its `sqlite_sequence` entry starts above every contact id
another table holds (HELD_CONTACT_IDS). An id deleted before this upgrade that nothing in the
database names any more (a purged contact whose memberships the sync has since forgotten) may
be handed out once more: only the links in old mail still carry it. PostgreSQL's sequence
never goes back: nothing to do there.

Revision ID: 0029
Revises: 0028
"""
from alembic import op

from nurture.store.sqlite_rebuild import HELD_CONTACT_IDS, raise_floor, rebuild


revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, "contact", True, revision)
        raise_floor(conn, "contact", HELD_CONTACT_IDS)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, "contact", False, revision)
