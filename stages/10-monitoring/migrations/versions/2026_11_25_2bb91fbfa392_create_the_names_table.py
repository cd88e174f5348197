"""Create the names table, as stage 03's db.create_all() made it.

Revision ID: 2bb91fbfa392
Revises:
Create Date: 2026-11-25 15:03:06.485161

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '2bb91fbfa392'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'names',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade():
    op.drop_table('names')
