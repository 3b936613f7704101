"""Vector stores (`/v1/vector_stores`): the stores, the files they hold (with their ingestion's claim), and
file batches. Their chunks come in 0007.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vector_stores",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("name", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("last_active_at", sa.Integer, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("expires_after_days", sa.Integer, nullable=True),
        sa.Column("expires_at", sa.Integer, nullable=True),
        sa.Column("expired", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("embedding_model", sa.String(255), nullable=False),
        sa.Column("embedding_dimensions", sa.Integer, nullable=True),
    )
    op.create_index("ix_vector_stores_expires_at", "vector_stores", ["expires_at"])
    op.create_index("ix_vector_stores_owner_seq", "vector_stores", ["owner", "seq"])
    op.create_table(
        "vector_store_file_batches",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "vector_store_id", sa.String(64), sa.ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_vector_store_file_batches_store", "vector_store_file_batches", ["vector_store_id"])
    op.create_table(
        "vector_store_files",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "vector_store_id", sa.String(64), sa.ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", _JSON, nullable=True),
        sa.Column("attributes", _JSON, nullable=True),
        sa.Column("chunking_strategy", _JSON, nullable=False),
        sa.Column("usage_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("claim", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_vector_store_files_store_file", "vector_store_files", ["vector_store_id", "file_id"], unique=True
    )
    op.create_index("ix_vector_store_files_pending", "vector_store_files", ["status", "claimed_until"])
    op.create_index("ix_vector_store_files_file", "vector_store_files", ["file_id"])
    op.create_index("ix_vector_store_files_batch", "vector_store_files", ["batch_id"])


def downgrade() -> None:
    op.drop_table("vector_store_files")
    op.drop_table("vector_store_file_batches")
    op.drop_table("vector_stores")
