"""drop ix_message_status (status, channel): every query that filters on status alone is
served by ix_message_queue (status, due_at), and each message changes status three times
(queued → sending → sent), each time rewriting an entry of every index on status

Revision ID: 0008
Revises: 0007
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_status')


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index('ix_message_status', ['status', 'channel'], unique=False)
