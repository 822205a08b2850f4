"""Routing over time: ledger rows carry their session, session state shared by replicas, and the
shadow log of candidate policies (``router.sessions``, ``router.shadow``).

Revision ID: 0008_routing_over_time
Revises: 0007_keyed_key_hashes
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_routing_over_time"
down_revision = "0007_keyed_key_hashes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("session_id", sa.String(64), nullable=True))
    op.create_index("ix_requests_session_created", "requests", ["session_id", "created_at"])
    op.create_table(
        "routing_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expert", sa.String(256), nullable=True),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("switches", sa.Integer(), nullable=False),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("prefix_tokens", sa.Integer(), nullable=False),
        sa.Column("floor_expert", sa.String(256), nullable=True),
        sa.Column("last_request_id", sa.String(32), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
    )
    op.create_index("ix_routing_sessions_updated", "routing_sessions", ["updated_at"])
    op.create_table(
        "shadow_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("policy_version", sa.String(128), nullable=False),
        sa.Column("served_policy", sa.String(128), nullable=True),
        sa.Column("served_version", sa.String(128), nullable=True),
        sa.Column("served_expert", sa.String(256), nullable=True),
        sa.Column("expert", sa.String(256), nullable=False),
        sa.Column("agrees", sa.Boolean(), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("lambda", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("served_cost_usd", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("served_score", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_shadow_decisions_request_id", "shadow_decisions", ["request_id"])
    op.create_index("ix_shadow_policy_created", "shadow_decisions", ["policy", "policy_version", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_policy_created", table_name="shadow_decisions")
    op.drop_index("ix_shadow_decisions_request_id", table_name="shadow_decisions")
    op.drop_table("shadow_decisions")
    op.drop_index("ix_routing_sessions_updated", table_name="routing_sessions")
    op.drop_table("routing_sessions")
    op.drop_index("ix_requests_session_created", table_name="requests")
    # A native DROP COLUMN (SQLite ≥ 3.35, PostgreSQL): batch mode would rebuild `requests`, and on
    # SQLite dropping the old table cascades to the feedback and attempt rows that reference it.
    op.execute("ALTER TABLE requests DROP COLUMN session_id")
