"""Offline conversions: `conversion_delivery` (per destination and event: pending, sent,
skipped or failed, with its reason, attempts and the platform's request id — unique on
(target, event_pk), so an event is sent to a destination once) and `conversion_run` (one row
per run of a conversion to a destination). New tables only.

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_text = sqlmodel.sql.sqltypes.AutoString
_time = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        'conversion_delivery',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('target', _text(), nullable=False),
        sa.Column('destination', _text(), nullable=False),
        sa.Column('conversion', _text(), nullable=False),
        sa.Column('event_pk', sa.Integer(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=False),
        sa.Column('status', _text(), nullable=False),
        sa.Column('reason', _text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('request_id', _text(), nullable=True),
        sa.Column('created_at', _time(), nullable=False),
        sa.Column('updated_at', _time(), nullable=False),
        sa.Column('sent_at', _time(), nullable=True),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('target', 'event_pk', name='uq_conversion_delivery'),
    )
    op.create_index('ix_conversion_delivery_due', 'conversion_delivery', ['target', 'status', 'id'])
    op.create_index('ix_conversion_delivery_contact', 'conversion_delivery', ['contact_id'])
    op.create_table(
        'conversion_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('conversion', _text(), nullable=False),
        sa.Column('target', _text(), nullable=False),
        sa.Column('destination', _text(), nullable=False),
        sa.Column('started_at', _time(), nullable=False),
        sa.Column('finished_at', _time(), nullable=True),
        sa.Column('status', _text(), nullable=False),
        sa.Column('due', sa.Integer(), nullable=False),
        sa.Column('sent', sa.Integer(), nullable=False),
        sa.Column('skipped', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.Column('validated', sa.Integer(), nullable=False),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('duration_ms', sa.Integer(), nullable=False),
        sa.Column('skipped_reasons', sa.JSON(), nullable=False),
        sa.Column('errors', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_conversion_run_target', 'conversion_run', ['conversion', 'target', 'started_at'])


def downgrade() -> None:
    op.drop_index('ix_conversion_run_target', table_name='conversion_run')
    op.drop_table('conversion_run')
    op.drop_index('ix_conversion_delivery_contact', table_name='conversion_delivery')
    op.drop_index('ix_conversion_delivery_due', table_name='conversion_delivery')
    op.drop_table('conversion_delivery')
