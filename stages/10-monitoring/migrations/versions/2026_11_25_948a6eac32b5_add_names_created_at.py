"""Add names.created_at, the moment each name was added.

Rows that exist already get the time of this upgrade: when they were added was never
recorded. Downgrading drops the column and keeps every name.

Revision ID: 948a6eac32b5
Revises: 2bb91fbfa392
Create Date: 2026-11-25 15:03:14.026071

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '948a6eac32b5'
down_revision = '2bb91fbfa392'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        'names',
        sa.Column(
            'created_at',
            sa.DateTime(timezone=True),
            server_default=sa.text('now()'),
            nullable=False,
        ),
    )


def downgrade():
    op.drop_column('names', 'created_at')
