"""The conversion check's index: every tick looks for goal events of the enrollments whose goal
window is open (journey, not converted, entered since the window's length ago); with this index
it reads those enrollments only, not every enrollment the journey ever had.

Revision ID: 0018
Revises: 0017
"""
from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_enrollment_open_goal', 'enrollment', ['journey', 'converted_at', 'entered_at'])


def downgrade() -> None:
    op.drop_index('ix_enrollment_open_goal', table_name='enrollment')
