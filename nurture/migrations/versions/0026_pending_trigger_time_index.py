"""journeypendingtrigger by (journey, occurred_at): every enrollment of an event-triggered
journey reads the pending trigger events that have come due (`occurred_at <= now`) — without
this index a scan of all the journey's pending rows per tick, which a past period replayed by
`nurture simulate` (its events all dated ahead of the clock at the start) or many scheduled
events make long.

Revision ID: 0026
Revises: 0025
"""
from alembic import op


revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('journeypendingtrigger', schema=None) as batch_op:
        batch_op.create_index('ix_pending_trigger_due', ['journey', 'occurred_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('journeypendingtrigger', schema=None) as batch_op:
        batch_op.drop_index('ix_pending_trigger_due')
