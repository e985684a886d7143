"""Identities (nurture.identities): `contact.external_id` (Segment's userId; unique),
`contact_identity` (every identifier a contact is known by: anonymous_id, external_id, email,
phone; unique on (kind, value)) and `contact_merge` (an anonymous contact merged into a known one).

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

_text = sqlmodel.sql.sqltypes.AutoString
_time = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table('contact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', _text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_contact_external_id'), ['external_id'], unique=True)
    op.create_table(
        'contact_identity',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=False),
        sa.Column('kind', _text(), nullable=False),
        sa.Column('value', _text(), nullable=False),
        sa.Column('first_seen_at', _time(), nullable=False),
        sa.ForeignKeyConstraint(['contact_id'], ['contact.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('kind', 'value', name='uq_contact_identity'),
    )
    op.create_index('ix_contact_identity_contact', 'contact_identity', ['contact_id'])
    op.create_table(
        'contact_merge',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('from_contact_id', sa.Integer(), nullable=False),
        sa.Column('into_contact_id', sa.Integer(), nullable=False),
        sa.Column('reason', _text(), nullable=False),
        sa.Column('merged_at', _time(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_contact_merge_into', 'contact_merge', ['into_contact_id'])


def downgrade() -> None:
    op.drop_index('ix_contact_merge_into', table_name='contact_merge')
    op.drop_table('contact_merge')
    op.drop_index('ix_contact_identity_contact', table_name='contact_identity')
    op.drop_table('contact_identity')
    with op.batch_alter_table('contact', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contact_external_id'))
        batch_op.drop_column('external_id')
