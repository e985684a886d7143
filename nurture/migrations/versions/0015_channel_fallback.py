"""Channel fallback (`send: {channels: [whatsapp, sms, email], …}`): `message.passed_over` records
why the channels before the chosen one were passed over, e.g. `whatsapp: no_consent; sms:
quiet_hours` (NULL for a single-channel send).

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('passed_over', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('passed_over')
