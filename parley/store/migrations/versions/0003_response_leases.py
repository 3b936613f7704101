"""A lease on each response being produced, so that one whose server died can be found;
and the tools of each conversation's last turn, to reuse its MCP listings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("lease_until", sa.Float, nullable=True))
    op.create_index("ix_responses_in_progress", "responses", ["status", "lease_until"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("last_tools", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("last_tools")
    op.drop_index("ix_responses_in_progress", "responses")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("lease_until")
