"""CRM as the source of truth: `deal` (every deal Nurture knows — pulled from HubSpot or
imported from a CRM export — with its current stage, amount and contact) and `crm_cursor` (how
far each CRM's pull has acknowledged: the last modification time and deal id read). New tables
only.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_text = sqlmodel.sql.sqltypes.AutoString
_time = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        'deal',
        sa.Column('crm', _text(), nullable=False),
        sa.Column('deal_id', _text(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=True),
        sa.Column('email', _text(), nullable=True),
        sa.Column('name', _text(), nullable=True),
        sa.Column('pipeline', _text(), nullable=True),
        sa.Column('stage', _text(), nullable=False),
        sa.Column('outcome', _text(), nullable=False),
        sa.Column('amount', sa.Float(), nullable=True),
        sa.Column('currency', _text(), nullable=True),
        sa.Column('closed_at', _time(), nullable=True),
        sa.Column('modified_at', _time(), nullable=False),
        sa.Column('created_at', _time(), nullable=False),
        sa.Column('updated_at', _time(), nullable=False),
        sa.ForeignKeyConstraint(['contact_id'], ['contact.id']),
        sa.PrimaryKeyConstraint('crm', 'deal_id'),
    )
    op.create_index('ix_deal_contact', 'deal', ['contact_id'])
    op.create_index('ix_deal_outcome', 'deal', ['outcome'])
    op.create_table(
        'crm_cursor',
        sa.Column('crm', _text(), nullable=False),
        sa.Column('modified_at', _time(), nullable=True),
        sa.Column('deal_id', _text(), nullable=True),
        sa.Column('updated_at', _time(), nullable=False),
        sa.PrimaryKeyConstraint('crm'),
    )


def downgrade() -> None:
    op.drop_table('crm_cursor')
    op.drop_index('ix_deal_outcome', table_name='deal')
    op.drop_index('ix_deal_contact', table_name='deal')
    op.drop_table('deal')
