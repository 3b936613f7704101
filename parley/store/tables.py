"""The database tables. Alembic's migrations in `migrations/` create them.

Items are stored once. A response row holds the response object without its
output; its input and output items are rows of `response_items`, ordered by
`position`. A `previous_response_id` chain is a list of links between
response rows, walked in one recursive query; no row copies the history.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

responses = sa.Table(
    "responses",
    metadata,
    # Insertion order, for listing; never timestamps.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("previous_response_id", sa.String(64), nullable=True, index=True),
    sa.Column("conversation_id", sa.String(64), nullable=True, index=True),
    # Deleted responses disappear from the API but keep their items for the
    # responses chained after them.
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    # The response object, less `output`.
    sa.Column("body", JSONType, nullable=False),
    # While in progress: until when the server producing it vouches for it (see ResponseStore.renew).
    sa.Column("lease_until", sa.Float, nullable=True),
    # The owner of the key that made it; null with authentication off (see parley.store.owners).
    sa.Column("owner", sa.String(64), nullable=True),
    # A background response's job: what it runs, sealed (parley.engine.background); null once it has ended.
    sa.Column("job", sa.Text, nullable=True),
    # The server running a background response (its token), how many times one took it, and whether a cancel
    # was asked of it while another server ran it.
    sa.Column("claim", sa.String(64), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # Whether a client follows its events through another server (see ResponseStore.ask_events).
    sa.Column("follow_asked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_responses_in_progress", "status", "lease_until"),
    # Queued background responses, oldest first.
    sa.Index("ix_responses_queued", "status", "seq"),
    # A caller's list walks its own rows in insertion order.
    sa.Index("ix_responses_owner_seq", "owner", "seq"),
)

# A background response's events, in batches, for a stream to be followed again from any point: `events`, a batch's
# [type, data] pairs as JSON, compressed (parley.store.responses._pack).
response_events = sa.Table(
    "response_events",
    metadata,
    sa.Column("response_id", sa.String(64), sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("first", sa.Integer, primary_key=True),
    sa.Column("last", sa.Integer, nullable=False),
    sa.Column("events", sa.LargeBinary, nullable=False),
)

response_items = sa.Table(
    "response_items",
    metadata,
    sa.Column("response_id", sa.String(64), sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    # "input" or "output"
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("item_id", sa.String(64), nullable=False, index=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", JSONType, nullable=False),
)


conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    # The position the next appended item gets; bumping it takes the row's lock.
    sa.Column("next_position", sa.BigInteger, nullable=False, server_default="0"),
    # The `tools` of the last turn that appended (secrets removed): MCP listings are reused while they hold.
    sa.Column("last_tools", JSONType, nullable=True),
    sa.Column("owner", sa.String(64), nullable=True),
    # Which turn holds the conversation (its token), and until when unless renewed (see ConversationStore.hold).
    sa.Column("turn", sa.String(64), nullable=True),
    sa.Column("turn_until", sa.Float, nullable=True),
)

# A conversation's items, in the order of `position`, assigned in the database
# when they are appended. Items appended by a response name it (`response_id`,
# `kind` input or output): the conversation is where they are stored. Deleted
# items leave a row behind so that an `after` cursor naming one still works.
# An item's owner is its conversation's, whoever added it: an admin who adds to
# someone's conversation adds to theirs.
conversation_items = sa.Table(
    "conversation_items",
    metadata,
    sa.Column(
        "conversation_id", sa.String(64), sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("position", sa.BigInteger, primary_key=True),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("response_id", sa.String(64), nullable=True),
    sa.Column("kind", sa.String(8), nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Index("ix_conversation_items_item", "conversation_id", "item_id", unique=True),
    sa.Index("ix_conversation_items_response", "response_id"),
)

# API keys (see parley.store.keys). The secret itself is never stored: only its
# SHA-256, by which a request's key is looked up, and a few of its first
# characters, by which a person tells keys apart.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# Uploaded files (see parley.store.files): one row each, the bytes in the blob store under `blob_key`.
# A file past its `expires_at` is gone to the API at once, and its row and bytes are removed by a sweep.
files = sa.Table(
    "files",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=True, index=True),
    sa.Column("filename", sa.String(1024), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("blob_key", sa.String(255), nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Index("ix_files_owner_seq", "owner", "seq"),
)

# Vector stores (see parley.store.vector_stores): a store's row, a row per file it holds, a row per file batch.
# A store's file counts and usage are counted from its files' rows when read, never kept beside them.
# Its chunks live in parley.vectors.index's tables, which join `vector_store_files` on (vector_store_id, file_id).
vector_stores = sa.Table(
    "vector_stores",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("last_active_at", sa.Integer, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    # OpenAI's `expires_after` is {"anchor": "last_active_at", "days": n}: `expires_at` follows `last_active_at`.
    sa.Column("expires_after_days", sa.Integer, nullable=True),
    sa.Column("expires_at", sa.Integer, nullable=True, index=True),
    # Set by the expiry sweep once it has removed the store's chunks; the row stays, `expired`.
    sa.Column("expired", sa.Boolean, nullable=False, server_default=sa.false()),
    # The model the store's vectors come from ("provider/model"), for its files and its queries alike,
    # and their size, known from the first file embedded.
    sa.Column("embedding_model", sa.String(255), nullable=False),
    sa.Column("embedding_dimensions", sa.Integer, nullable=True),
    sa.Index("ix_vector_stores_owner_seq", "owner", "seq"),
)

vector_store_file_batches = sa.Table(
    "vector_store_file_batches",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("vector_store_id", sa.String(64), sa.ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    # A batch's status follows its files' until it is cancelled.
    sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_vector_store_file_batches_store", "vector_store_id"),
)

# A file in a store, and its ingestion: `in_progress` until a server claims it (`claim`, a token of its own,
# `claimed_until` the lease it renews), reads, parses, chunks and embeds it, and marks it `completed` or
# `failed`. A claim whose lease lapsed (its server died) is taken over by any server; `attempts` counts claims.
vector_store_files = sa.Table(
    "vector_store_files",
    metadata,
    # Insertion order, for listing.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("vector_store_id", sa.String(64), sa.ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False),
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    # in_progress, completed, failed, cancelled
    sa.Column("status", sa.String(16), nullable=False),
    # {"code": server_error | unsupported_file | invalid_file, "message": ...}
    sa.Column("last_error", JSONType, nullable=True),
    sa.Column("attributes", JSONType, nullable=True),
    # OpenAI's static strategy object, normalized ({"type": "static", "static": {...}}).
    sa.Column("chunking_strategy", JSONType, nullable=False),
    sa.Column("usage_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("batch_id", sa.String(64), nullable=True),
    sa.Column("claim", sa.String(64), nullable=True),
    sa.Column("claimed_until", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_vector_store_files_store_file", "vector_store_id", "file_id", unique=True),
    sa.Index("ix_vector_store_files_pending", "status", "claimed_until"),
    sa.Index("ix_vector_store_files_file", "file_id"),
    sa.Index("ix_vector_store_files_batch", "batch_id"),
)
