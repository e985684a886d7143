"""The trigger event a journey's enrollment cursor has read: when a live journey's trigger
changes to another event, its cursor starts again (the `lookback` bounds what it reads). Kept
per journey name alone, the cursor skipped every event of the new name tracked before the
edit with an id below the last event of the old one — an arbitrary cut. Existing cursors get
their trigger at their next tick, and keep their place.

Revision ID: 0023
Revises: 0022
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('journeycursor', sa.Column('trigger_event', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('journeycursor') as batch:
        batch.drop_column('trigger_event')
