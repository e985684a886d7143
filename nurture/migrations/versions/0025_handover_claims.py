"""Handover claims: a delivery run marks the pending handovers it delivers with its token
(`claim`, `claimed_at`) and commits that before it calls the CRM, outside any write
transaction; two runs never deliver one handover, and a claim left by a crash is taken over
once it is stale (nurture.scoring.handover).

Revision ID: 0025
Revises: 0024
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('handover', sa.Column('claim', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.add_column('handover', sa.Column('claimed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('handover') as batch:
        batch.drop_column('claimed_at')
        batch.drop_column('claim')
