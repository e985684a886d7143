"""SQLite's AUTOINCREMENT tables hand out no id another table still holds.

Migration 0019 started `event`'s `sqlite_sequence` above the journey cursors only. Other tables
hold event ids too, most without a foreign key: `conversion_delivery.event_pk` (unique per
destination), `contact_touch.event_pk`, `enrollment.trigger_event_pk`,
`journeypendingtrigger.event_pk`. Events deleted before that upgrade (retention, a
never-confirmed contact's removal) above the furthest cursor had their ids handed out again,
and a new purchase whose id a purged event's delivered conversion held was never sent to the
ad platform. The same holds for the ids of enrollments (a message's `enrollment_id`, a
handover's) and of consent rows (a double opt-in request's attempt key, `consent:<id>`).

This raises the `sqlite_sequence` entry of `event`, `enrollment` and `consent` to the highest id
any table holds (nurture.store.sqlite_rebuild.raise_floor; one UPDATE each, no row read into
Python); where the entry is higher already, nothing changes. 0019 now does the same, so a
database upgraded from before it ends the same. `contact_merge` ids are held nowhere else;
`message` ids (0020) only outside the database (.eml files, the SMTP hand-over journal).

PostgreSQL: nothing to do. A sequence never goes back, and every id these tables hold was read
from a row the sequence numbered, so none is above the sequence's last value.

Revision ID: 0028
Revises: 0027
"""
from alembic import op

from nurture.store.sqlite_rebuild import HELD_IDS, raise_floor


revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None



def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    for table, references in HELD_IDS.items():
        raise_floor(conn, table, references)


def downgrade() -> None:
    pass  # a higher floor is right for the older schema too
