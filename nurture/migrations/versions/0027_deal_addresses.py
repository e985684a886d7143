"""`deal_address`: every address a deal waiting for its contact names, in the CRM's order, so the
deal attaches when any of them becomes a contact's (before, only its first address was kept, in
`deal.email`). The waiting deals' first addresses are copied in; nothing else changes.

Revision ID: 0027
Revises: 0026
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

_text = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        'deal_address',
        sa.Column('crm', _text(), nullable=False),
        sa.Column('deal_id', _text(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('email', _text(), nullable=False),
        sa.PrimaryKeyConstraint('crm', 'deal_id', 'position'),
    )
    op.create_index('ix_deal_address_email', 'deal_address', ['email'])
    op.execute("INSERT INTO deal_address (crm, deal_id, position, email) "
               "SELECT crm, deal_id, 0, email FROM deal WHERE contact_id IS NULL AND email IS NOT NULL")


def downgrade() -> None:
    op.drop_index('ix_deal_address_email', table_name='deal_address')
    op.drop_table('deal_address')
