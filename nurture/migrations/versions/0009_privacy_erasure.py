"""privacy: the `erasure` table (one row per GDPR Art. 17 request: who, when, why, counts of
what was removed — never the personal data) and `consent.subject_hash`, the hashed tombstone an
erasure leaves in the consent ledger. Both additive: existing rows are untouched.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'erasure',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=True),
        sa.Column('subject_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('removed', sa.JSON(), nullable=False),
        sa.Column('pending', sa.JSON(), nullable=False),
        sa.Column('requested_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('completed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_erasure_subject', 'erasure', ['subject_hash'])
    op.create_index('ix_erasure_contact', 'erasure', ['contact_id'])
    # A nullable column without a default: ALTER TABLE … ADD COLUMN on both backends (SQLite's
    # batch mode adds it in place, no table copy), instant on PostgreSQL.
    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('consent', schema=None) as batch_op:
        batch_op.drop_column('subject_hash')
    op.drop_index('ix_erasure_contact', table_name='erasure')
    op.drop_index('ix_erasure_subject', table_name='erasure')
    op.drop_table('erasure')
