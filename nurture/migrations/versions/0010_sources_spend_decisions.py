"""honest money: `contact_touch` (each contact's first and last lead source: UTM parameters and
click id), `ad_spend` (imported spend per day/source/medium/campaign) and `split_decision` (a
split's auto_winner decision). New tables only: existing rows are untouched.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_text = sqlmodel.sql.sqltypes.AutoString
_time = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        'contact_touch',
        sa.Column('contact_id', sa.Integer(), nullable=False),
        sa.Column('touch', _text(), nullable=False),
        sa.Column('source', _text(), nullable=True),
        sa.Column('medium', _text(), nullable=True),
        sa.Column('campaign', _text(), nullable=True),
        sa.Column('content', _text(), nullable=True),
        sa.Column('term', _text(), nullable=True),
        sa.Column('click_id_type', _text(), nullable=True),
        sa.Column('click_id', _text(), nullable=True),
        sa.Column('event_pk', sa.Integer(), nullable=True),
        sa.Column('occurred_at', _time(), nullable=False),
        sa.ForeignKeyConstraint(['contact_id'], ['contact.id']),
        sa.PrimaryKeyConstraint('contact_id', 'touch'),
    )
    op.create_index('ix_contact_touch_source', 'contact_touch', ['touch', 'source', 'medium'])
    op.create_table(
        'ad_spend',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('source', _text(), nullable=False),
        sa.Column('medium', _text(), nullable=False),
        sa.Column('campaign', _text(), nullable=False),
        sa.Column('amount', sa.Float(), nullable=False),
        sa.Column('currency', _text(), nullable=False),
        sa.Column('imported_from', _text(), nullable=False),
        sa.Column('imported_at', _time(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('day', 'source', 'medium', 'campaign', name='uq_ad_spend_key'),
    )
    op.create_table(
        'split_decision',
        sa.Column('journey', _text(), nullable=False),
        sa.Column('step_id', _text(), nullable=False),
        sa.Column('winner', _text(), nullable=False),
        sa.Column('metric', _text(), nullable=False),
        sa.Column('confidence', sa.Float(), nullable=False),
        sa.Column('decided_at', _time(), nullable=False),
        sa.Column('version', _text(), nullable=True),
        sa.Column('stats', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('journey', 'step_id'),
    )


def downgrade() -> None:
    op.drop_table('split_decision')
    op.drop_table('ad_spend')
    op.drop_index('ix_contact_touch_source', table_name='contact_touch')
    op.drop_table('contact_touch')
