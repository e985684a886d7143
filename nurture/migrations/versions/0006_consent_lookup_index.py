"""consent lookup index ends with id: "the latest row" (ORDER BY recorded_at DESC, id DESC) is
read from the index alone, for the send guards and segment membership alike

Revision ID: 0006
Revises: 0005
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_lookup')
        batch_op.create_index('ix_consent_lookup', ['contact_id', 'channel', 'purpose', 'recorded_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_lookup')
        batch_op.create_index('ix_consent_lookup', ['contact_id', 'channel', 'purpose', 'recorded_at'], unique=False)
