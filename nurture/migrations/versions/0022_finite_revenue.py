"""A conversion's revenue is the goal event's `value` read as an amount from 0 to 1e12
(conversions.event_fields.value_of); before, any text that Python's float() took counted:
"Infinity" stored an infinite revenue (every report sum infinite, `report --json` not JSON),
"NaN" a NaN on PostgreSQL (on SQLite the tick failed instead), "-5" a negative one. Revenue
already recorded outside that range becomes 0, as the same value would be recorded now.
PostgreSQL orders NaN above every number, so `> 1e12` finds it too.

Revision ID: 0022
Revises: 0021
"""
from alembic import op


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE enrollment SET revenue = 0 WHERE revenue > 1e12 OR revenue < 0")


def downgrade() -> None:
    pass  # the values were never amounts: nothing to restore
