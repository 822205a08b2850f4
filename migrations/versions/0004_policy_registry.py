"""Policy registry: provenance and promotion time of each version, and the registry's history.

Revision ID: 0004_policy_registry
Revises: 0003_usage_details
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_policy_registry"
down_revision = "0003_usage_details"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("promoted_at", TS, nullable=True))
    op.create_table(
        "policy_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("previous_version", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=True),
    )
    op.create_index("ix_policy_events_policy", "policy_events", ["policy", "id"])


def downgrade() -> None:
    op.drop_index("ix_policy_events_policy", table_name="policy_events")
    op.drop_table("policy_events")
    with op.batch_alter_table("policy_versions") as batch:
        batch.drop_column("promoted_at")
        batch.drop_column("provenance")
