"""Date triggers (`trigger: {date: birthday, every: year}`): `enrollment.trigger_key` names the
occurrence that enrolled a contact (`2027` for a yearly date, `2027-06-30` for a date that fires
once; NULL for other triggers), unique per journey and contact, so an occurrence never enrolls
twice — not on a re-run at the same clock, not with two workers ticking at once.

Revision ID: 0016
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('enrollment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trigger_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        # NULLs are distinct in a unique index (SQLite and PostgreSQL): other triggers' rows never clash
        batch_op.create_index('uq_enrollment_trigger_key', ['journey', 'contact_id', 'trigger_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('enrollment', schema=None) as batch_op:
        batch_op.drop_index('uq_enrollment_trigger_key')
        batch_op.drop_column('trigger_key')
