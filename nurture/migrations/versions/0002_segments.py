"""segments: segment_membership (what each destination acknowledged) and sync_run

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'segment_membership',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('segment', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=False),
        sa.Column('contact_version', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('acked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('segment', 'target', 'contact_id', name='uq_segment_membership'),
    )
    with op.batch_alter_table('segment_membership', schema=None) as batch_op:
        batch_op.create_index('ix_segment_membership_contact', ['contact_id'], unique=False)

    op.create_table(
        'sync_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('segment', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('members', sa.Integer(), nullable=False),
        sa.Column('added', sa.Integer(), nullable=False),
        sa.Column('removed', sa.Integer(), nullable=False),
        sa.Column('updated', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('duration_ms', sa.Integer(), nullable=False),
        sa.Column('errors', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('sync_run', schema=None) as batch_op:
        batch_op.create_index('ix_sync_run_target', ['segment', 'target', 'started_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sync_run', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_run_target')
    op.drop_table('sync_run')
    with op.batch_alter_table('segment_membership', schema=None) as batch_op:
        batch_op.drop_index('ix_segment_membership_contact')
    op.drop_table('segment_membership')
