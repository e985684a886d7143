"""Delivery leases (nurture.send.lease): a delivery run holds the messages it marked `sending`
with its claim token while it is alive, and reconcile leaves them to it — a slow channel no
longer lets another tick's reconcile re-queue, and send again, a message still being sent.

Revision ID: 0021
Revises: 0020
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'delivery_lease',
        sa.Column('token', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('host', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('boot', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started', sa.BigInteger(), nullable=True),
        sa.Column('taken_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('beat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('token'),
    )


def downgrade() -> None:
    op.drop_table('delivery_lease')
