"""API keys hashed with HMAC-SHA256 under a server secret: each key row records its hash scheme.

Existing rows keep their plain SHA-256 and are marked ``sha256``: they stay valid, and the first
request with each re-hashes it under the server secret (``router.access.keys``). A migration
cannot do it itself: it never sees the keys.

Downgrading drops the column; keys created or used since the upgrade (keyed hashes) then no
longer verify under the older release and must be recreated.

Revision ID: 0007_keyed_key_hashes
Revises: 0006_ledger_rollups
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_keyed_key_hashes"
down_revision = "0006_ledger_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("hash_scheme", sa.String(32), nullable=False, server_default="sha256"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("hash_scheme")
