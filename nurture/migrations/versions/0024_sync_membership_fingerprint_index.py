"""segment_membership by (target, fingerprint): before a removal, the sync asks whether another
acknowledged row of the same target key (another segment feeding the same audience, or a
contact whose identifiers normalize the same) still holds the identifiers it would remove
(nurture.segments.sync.push_removals) — without this index, a scan of every row per batch.

Revision ID: 0024
Revises: 0023
"""
from alembic import op


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segment_membership', schema=None) as batch_op:
        batch_op.create_index('ix_segment_membership_fingerprint', ['target', 'fingerprint'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('segment_membership', schema=None) as batch_op:
        batch_op.drop_index('ix_segment_membership_fingerprint')
