"""Instant runs (nurture.runtime.instant): `instant_run` relays what `nurture web` did between
ticks to the next tick's artifact, which removes the rows it reported.

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'instant_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('journey', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('ran_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_instant_run_journey', 'instant_run', ['journey', 'id'])


def downgrade() -> None:
    op.drop_index('ix_instant_run_journey', table_name='instant_run')
    op.drop_table('instant_run')
