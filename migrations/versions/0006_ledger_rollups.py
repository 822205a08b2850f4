"""Half-hourly rollups of the ledger for the dashboard (``router.ledger.rollups``), backfilled
from the existing requests.

Revision ID: 0006_ledger_rollups
Revises: 0005_dashboard_indexes
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_ledger_rollups"
down_revision = "0005_dashboard_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_rollups",
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("expert", sa.String(256), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("latency_n", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "expert", "policy", "status"),
        sqlite_with_rowid=False,  # clustered on the key: a range of slots is one sequential read
    )
    op.create_table(
        "latency_rollups",
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "bin"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "feedback_rollups",
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("policy_version", sa.String(128), nullable=False),
        sa.Column("expert", sa.String(256), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "policy", "policy_version", "expert"),
        sqlite_with_rowid=False,
    )
    # The same Python code as the writer assigns rows to slots and bins: no boundary disagreements.
    from router.ledger import rollups

    rollups.backfill(op.get_bind())
    rollups.backfill_feedback(op.get_bind())


def downgrade() -> None:
    op.drop_table("feedback_rollups")
    op.drop_table("latency_rollups")
    op.drop_table("request_rollups")
