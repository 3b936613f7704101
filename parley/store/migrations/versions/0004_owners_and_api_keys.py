"""API keys, and the owner of each response, conversation and conversation item.

Rows from before this migration keep no owner: only admin keys (and a server
with authentication off) see them (see parley.store.owners).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    for table in ("responses", "conversations", "conversation_items"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
    op.create_index("ix_responses_owner_seq", "responses", ["owner", "seq"])


def downgrade() -> None:
    op.drop_index("ix_responses_owner_seq", "responses")
    for table in ("conversation_items", "conversations", "responses"):
        # ALTER TABLE ... DROP COLUMN, which SQLite has had since 3.35, rather than a batch's copy of the
        # table: dropping the old `responses` would cascade to every row of `response_items`.
        op.execute(f"ALTER TABLE {table} DROP COLUMN owner")
    op.drop_table("api_keys")
