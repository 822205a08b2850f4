"""Indexes of the admin dashboard: keyset pagination and filters of the ledger browser, a
covering index for the overview's aggregates, and feedback by time.

Revision ID: 0005_dashboard_indexes
Revises: 0004_policy_registry
Create Date: 2026-11-23
"""

from alembic import op

revision = "0005_dashboard_indexes"
down_revision = "0004_policy_registry"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_requests_created_id", "requests", ["created_at", "id"]),
    ("ix_requests_policy_created", "requests", ["policy", "created_at"]),
    ("ix_requests_status_created", "requests", ["status", "created_at"]),
    ("ix_requests_key_created", "requests", ["api_key_id", "created_at"]),
    ("ix_requests_overview", "requests", ["created_at", "expert", "status", "latency_ms", "cost_usd"]),
    ("ix_feedback_created", "feedback", ["created_at", "request_id", "score"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
