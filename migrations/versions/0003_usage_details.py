"""Backend-specific usage details on requests and attempts.

Revision ID: 0003_usage_details
Revises: 0002_api_keys
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_usage_details"
down_revision = "0002_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("usage_details", sa.JSON(), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("usage_details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("usage_details")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("usage_details")
