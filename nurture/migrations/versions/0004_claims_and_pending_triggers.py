"""claims and pending triggers: message.claimed_at (a row is stuck only when its *claim* is old)
and journeypendingtrigger (trigger events dated after the tick that read them)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_table(
        'journeypendingtrigger',
        sa.Column('journey', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('event_pk', sa.Integer(), nullable=False),
        sa.Column('occurred_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('journey', 'event_pk'),
    )


def downgrade() -> None:
    op.drop_table('journeypendingtrigger')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
